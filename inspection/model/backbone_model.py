"""The part every method on pretrained backbone features shares: backbone parameters, the extractor, and the
weights it was fitted with (refused on load when other weights are found)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch

from ..errors import ModelFileError
from ..features.backbones import BACKBONES, DEFAULT_BACKBONE, get_backbone_spec
from ..features.extractor import shared_feature_extractor
from ..params import ParamSet, setting
from . import modes
from .base import AnomalyModel
from .batching import iter_batches
from .capabilities import Capabilities
from .header import BackboneRecord, ModelHeader
from .heldout import HeldoutChunk


def _check_layers(values: Mapping[str, Any]) -> None:
    if values["layers"]:  # empty: the method's default strides (as files of version 0.1 store it)
        get_backbone_spec(values["backbone"]).resolve_layers(values["layers"])


_BACKBONE_PARAMS = ("backbone", "weights", "layers")


class BackboneModel(AnomalyModel):
    """An AnomalyModel that scores the intermediate features of a pretrained backbone."""

    #: The strides of the feature maps the method uses by default, shallowest first: each backbone answers
    #: with its deepest layer at that stride (e.g. 8, 16 → blocks.2, blocks.4 of EfficientNet-Lite0).
    feature_strides: ClassVar[tuple[int, ...]] = (8, 16)
    capabilities = Capabilities(stages={"features": "Extracting features of the good images"})
    param_rules = (_check_layers,)

    backbone: str = setting(DEFAULT_BACKBONE, "Pretrained network whose intermediate features are compared.",
                            choices=tuple(BACKBONES), group="backbone")
    weights: str = setting("", "Backbone weights: empty for the ImageNet weights found automatically, a file path, "
                           "or 'random' (untrained; for tests of the mechanics only).", group="backbone",
                           note="empty = ImageNet weights")
    layers: str = setting("", "Feature layers, comma-separated: layer names, or strides (the deepest layer at that "
                          "stride).", group="backbone")

    @classmethod
    def param_set(cls) -> ParamSet:
        # The default layers are the method's strides, and the help says what they are on the usual backbones.
        default_layers = ",".join(str(stride) for stride in cls.feature_strides)
        examples = "; ".join(f"{name}: {', '.join(spec.resolve_layers(default_layers))}"
                             for name, spec in BACKBONES.items() if name in (DEFAULT_BACKBONE, "mobilenet_v2"))
        declared = super().param_set()
        if "layers" not in cls.default_overrides:
            declared = declared.with_defaults(layers=default_layers)
        said = [replace(param, help=f"{param.help} The default {default_layers} means {examples}.")
                if param.name == "layers" else param for param in declared]
        # The backbone's settings come after the method's own, in forms and --help as in the model file.
        backbone = [param for param in said if param.name in _BACKBONE_PARAMS]
        return ParamSet(tuple(param for param in said if param.name not in _BACKBONE_PARAMS) + tuple(backbone),
                        declared.rules)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The backbone layers the method reads, shallowest first (the `layers` parameter resolved)."""
        # Files of version 0.1 stored "" for the default layers.
        return get_backbone_spec(self.backbone).resolve_layers(
            self.layers or ",".join(str(stride) for stride in self.feature_strides))

    def layer_channels(self) -> list[int]:
        spec = get_backbone_spec(self.backbone)
        return [spec.layers[layer].channels for layer in self.layer_names]

    def layer_strides(self) -> list[int]:
        spec = get_backbone_spec(self.backbone)
        return [spec.layers[layer].stride for layer in self.layer_names]

    def padding_multiple(self) -> int:
        # Every chosen layer's grid then divides the working size exactly: coarse and fine grids stay aligned.
        return max(self.layer_strides())

    def default_normalization(self) -> str:
        return get_backbone_spec(self.backbone).default_normalization

    def _setup(self) -> None:
        self.extractor, self.resolved_weights = shared_feature_extractor(
            self.backbone, self.layer_names, self.weights, self.seed, str(self.torch_device))

    def input_normalization(self) -> str:
        # The normalisation belongs to the weights actually found (e.g. [-1, 1] for TF-Lite conversions).
        return self.resolved_weights.normalization

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the chosen layers, shallowest first."""
        by_name = self.extractor(images)
        return [by_name[layer] for layer in self.layer_names]

    def score_features(self, features: list[torch.Tensor], size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The method's scoring after the backbone: anomaly maps [B, H, W] at the working size `size` (the size of
        the images the features came from) and image scores [B] from the chosen layers' feature maps (shallowest
        first, as `features` gives them). Methods offering the aspect mode also take `content` (see `_score`).

        Differentiable in the features: `inspection.explain.gradcam` takes the gradient of a score with respect to a
        layer through it (Grad-CAM), so plain scoring and explanations share one computation."""
        raise NotImplementedError(f"{type(self).__name__} implements neither score_features nor _score")

    def explanation_layers(self) -> dict[str, str]:
        if type(self).score_features is BackboneModel.score_features:
            return {}  # no differentiable scoring after the backbone to explain
        spec = get_backbone_spec(self.backbone)
        trunk = list(spec.layers)
        return {layer: f"{layer} (stride {spec.layers[layer].stride})"
                for layer in sorted(self.layer_names, key=trunk.index)}

    def explanation_forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        by_name = self.extractor(images)
        maps, scores = self.score_features([by_name[name] for name in self.layer_names],
                                           (int(images.shape[-2]), int(images.shape[-1])))
        return by_name, maps, scores

    def explanation_network(self) -> torch.nn.Module:
        return self.extractor

    def explanation_note(self) -> str:
        return ""  # the explained score is the model's own

    def _score(self, images: torch.Tensor, content: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._score_features(self.features(images), (int(images.shape[-2]), int(images.shape[-1])), content)

    def _score_features(self, features: list[torch.Tensor], size: tuple[int, int], content: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        # `content` only for aspect mode: the methods that do not offer it take no such keyword.
        if content is None:
            return self.score_features(features, size)
        return self.score_features(features, size, content=content)

    def _heldout_chunks(self, images: Sequence[Any]) -> Iterator[HeldoutChunk]:
        # The chosen layers' maps: what `score_features` takes, so scoring them again skips the backbone.
        preprocessing = self.preprocessing
        for tensor, geometries, indices in iter_batches(images, preprocessing, self.batch_size):
            tensor = tensor.to(self.torch_device)
            owners = torch.tensor(indices, dtype=torch.long)
            size, content = (int(tensor.shape[-2]), int(tensor.shape[-1])), None
            if preprocessing.mode == "tiles":  # each image's tiles, image by image (`modes.score_tiled`'s order)
                parts = [self.features(tiles) for tiles in modes.tiles(tensor, preprocessing.crop,
                                                                       preprocessing.tile_overlap, self.batch_size)]
                features = [torch.cat(layer) for layer in zip(*parts)]
                owners = owners.repeat_interleave(features[0].shape[0] // tensor.shape[0])
                size = (preprocessing.crop, preprocessing.crop)
            else:
                features = self.features(tensor)
                if preprocessing.mode == "aspect":
                    content = modes.content_sizes(tensor, [geometry.seen for geometry in geometries]).cpu()
            yield HeldoutChunk([feature.half().cpu() for feature in features], size, owners, content,
                               self._heldout_extras(features))

    def _heldout_extras(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the method keeps beside a chunk's features (full precision here) to score them again faster."""
        return {}

    def _score_heldout(self, chunk: HeldoutChunk) -> torch.Tensor:
        features = [feature.to(self.torch_device, torch.float32) for feature in chunk.features]
        content = None if chunk.content is None else chunk.content.to(self.torch_device)
        return self._score_features(features, chunk.size, content)[1]

    def _backbone_record(self) -> BackboneRecord:
        weights = self.resolved_weights
        return BackboneRecord(self.backbone, list(self.layer_names), weights.source, weights.normalization,
                              weights.fingerprint)

    def _check_header(self, header: ModelHeader) -> None:
        saved = header.backbone
        if saved is None or saved.name not in BACKBONES:
            raise ModelFileError(f"the model was made with backbone {saved.name if saved else None!r}, unknown to "
                                 "this version")
        self._ensure_setup()
        found = self.resolved_weights
        if saved.weights_fingerprint != found.fingerprint:
            raise ModelFileError(
                f"the model was made with other {saved.name} weights ({saved.weights_fingerprint}, from "
                f"{saved.weights_source}) than those found now ({found.fingerprint}, from {found.source}); its "
                "scores would be meaningless. Point 'weights' at the original file or retrain.")
