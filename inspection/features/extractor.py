"""A backbone as a named multi-layer feature extractor: images in, {layer name: feature map} out."""

from __future__ import annotations

import functools
import os
from collections import OrderedDict

import torch
from torch import nn

from .backbones import BackboneSpec, get_backbone_spec
from .weights import ResolvedWeights, build_backbone


class FeatureExtractor(nn.Module):
    """Runs a backbone's trunk up to the deepest requested layer and returns {layer name: feature map}."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, layers: tuple[str, ...], channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last  # on the CPU only; False is there to measure what it gains
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
        step = _cpu_micro_batch(images)
        if step < images.shape[0]:
            # On a CPU a large batch's activations spill out of the caches: a batch of 16 bottle images cost twice
            # as much per image as one image alone (bench/runtimes/). Small slices keep them in the caches; the
            # features are the same.
            parts = [self._forward(chunk) for chunk in images.split(step)]
            return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        output = images
        if self.channels_last and images.device.type == "cpu":
            # oneDNN's convolutions are much faster on channels-last tensors, most of all in batches and on large
            # images (bench/channels-last/). The features
            # go back to the usual layout, so what follows sees the same tensors as before.
            output = images.contiguous(memory_format=torch.channels_last)
        for name, module in zip(self._names, self.stages.values()):
            output = module(output)
            if name in self.layers:
                features[name] = output.contiguous()
        return features


#: On a CPU the backbone runs over slices of a batch of at most this many pixels (two 256 × 256 images).
CPU_SLICE_PIXELS = 2 * 256 * 256


def _cpu_micro_batch(images: torch.Tensor) -> int:
    """How many images of the batch the backbone takes at once: all of them on a GPU (and in a graph being
    exported, whose batch size is free), a slice of `CPU_SLICE_PIXELS` on a CPU."""
    if images.device.type != "cpu" or torch.onnx.is_in_onnx_export():
        return images.shape[0]
    return max(1, CPU_SLICE_PIXELS // (images.shape[-2] * images.shape[-1]))


def create_feature_extractor(name: str, layers: str | tuple[str, ...], weights: str | os.PathLike | None = None,
                             seed: int = 0) -> tuple[FeatureExtractor, ResolvedWeights]:
    """Build backbone `name` with its weights, wrapped to return the given layers (names or strides)."""
    spec = get_backbone_spec(name)
    model, resolved = build_backbone(name, weights, seed)
    return FeatureExtractor(model, spec, spec.resolve_layers(layers)), resolved


@functools.lru_cache(maxsize=4)
def shared_feature_extractor(name: str, layers: tuple[str, ...], weights: str, seed: int,
                             device: str) -> tuple[FeatureExtractor, ResolvedWeights]:
    """One extractor per (backbone, layers, weights, device), shared by every model that asks for it."""
    # Several models of one backbone (the app's compare page) share one extractor instead of one each.
    extractor, resolved = create_feature_extractor(name, layers, weights or None, seed)
    return extractor.to(device), resolved
