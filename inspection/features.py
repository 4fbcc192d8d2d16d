"""The part every backbone-feature method shares: backbone parameters, the extractor, weights bookkeeping."""

from __future__ import annotations

import functools
from typing import Any

import torch

from .backbones import (BACKBONES, DEFAULT_BACKBONE, FeatureExtractor, ResolvedWeights, create_feature_extractor,
                        get_backbone_spec)
from .base import AnomalyModel
from .modelfile import ModelFileError
from .params import Param, params

BACKBONE_PARAMS = params(
    Param("backbone", str, DEFAULT_BACKBONE, "Pretrained network whose intermediate features are compared.",
          choices=tuple(BACKBONES), group="backbone"),
    Param("weights", str, "", "Backbone weights: empty for the ImageNet weights found automatically, a file "
          "path, or 'random' (untrained; for tests of the mechanics only).", group="backbone"),
    Param("layers", str, "", "Comma-separated layer names; empty for the method's default layers of the backbone.",
          group="backbone"),
)


@functools.lru_cache(maxsize=4)
def _cached_extractor(backbone: str, layers: tuple[str, ...], weights: str, seed: int,
                      device: str) -> tuple[FeatureExtractor, ResolvedWeights]:
    # Several models of one backbone (the app's compare page) share one extractor instead of one each.
    extractor, resolved = create_feature_extractor(backbone, layers, weights or None, seed)
    return extractor.to(device), resolved


class BackboneModel(AnomalyModel):
    """An AnomalyModel that scores the intermediate features of a pretrained backbone."""

    @classmethod
    def param_set(cls):
        return super().param_set() + BACKBONE_PARAMS

    @property
    def layers(self) -> tuple[str, ...]:
        spec = get_backbone_spec(self.params["backbone"])
        given = tuple(layer.strip() for layer in self.params["layers"].split(",") if layer.strip())
        return spec.check_layers(given) if given else spec.layers_for(self.name)

    def layer_channels(self) -> list[int]:
        spec = get_backbone_spec(self.params["backbone"])
        return [spec.layers[layer].channels for layer in self.layers]

    def layer_strides(self) -> list[int]:
        spec = get_backbone_spec(self.params["backbone"])
        return [spec.layers[layer].stride for layer in self.layers]

    def default_normalization(self) -> str:
        return get_backbone_spec(self.params["backbone"]).default_normalization

    def _setup(self) -> None:
        self.extractor, self.resolved_weights = _cached_extractor(
            self.params["backbone"], self.layers, self.params["weights"], self.params["seed"], str(self.device))

    def input_normalization(self) -> str:
        # The normalisation belongs to the weights actually found (e.g. [-1, 1] for TF-Lite conversions).
        return self.resolved_weights.normalization

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the chosen layers, shallowest first."""
        by_name = self.extractor(images)
        return [by_name[layer] for layer in self.layers]

    def _header_extra(self) -> dict[str, Any]:
        return {"backbone": {"name": self.params["backbone"], "layers": list(self.layers),
                             "weights": self.resolved_weights.to_dict()}}

    def _check_header_extra(self, header: dict[str, Any]) -> None:
        saved = header.get("backbone") or {}
        if saved.get("name") not in BACKBONES:
            raise ModelFileError(f"the model was made with backbone {saved.get('name')!r}, unknown to this version")
        self._ensure_setup()
        expected = saved.get("weights", {}).get("fingerprint")
        found = self.resolved_weights.fingerprint
        if expected != found:
            raise ModelFileError(
                f"the model was made with other {saved['name']} weights ({expected}, from "
                f"{saved.get('weights', {}).get('source')}) than those found now ({found}, from "
                f"{self.resolved_weights.source}); its scores would be meaningless. Point 'weights' at the "
                "original file or retrain.")
