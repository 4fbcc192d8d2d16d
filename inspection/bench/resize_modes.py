"""What each resize mode costs for images of a given size: the working size (or tiles) the backbone sees, the share
of the image inspected, the chosen layers' feature memory, and (when measured) the backbone's milliseconds.

Shown beside the resize-mode choice in the Train page, for the open dataset's image size: a centre crop is cheap
and sees part of the image, `aspect` sees all of it at the same scale, `tiles` at a chosen scale in pieces. The
numbers are the feature extraction's (the part every feature method shares and the part that grows with the
pixels); the method's own scoring adds to it. Weights do not change them: the backbone is built untrained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from ..features.cost import time_call
from ..model.backbone_model import BackboneModel
from ..ops.tiles import tile_grid


@dataclass(frozen=True)
class ResizeModeCost:
    """One resize mode on one image size."""

    mode: str
    working: str  # e.g. "256 × 640" or "6 tiles of 224 × 224"
    inspected_fraction: float
    pixels: int  # the backbone's input pixels per image, every tile included
    feature_mib: float  # the chosen layers' activations of one image (float32), every tile included
    ms_per_image: float | None = None  # median of the backbone's forward passes (every tile), when measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resize_mode_costs(method_cls: type[BackboneModel], params: dict[str, Any], height: int, width: int,
                      measure: bool = False, repeats: int = 3) -> list[ResizeModeCost]:
    """The cost of every resize mode the method offers, for one image of height × width, with these settings."""
    costs = []
    for mode in method_cls.capabilities.resize_modes:
        model = method_cls(**{**params, "resize_mode": mode, "weights": "random", "device": "cpu"})
        model._ensure_setup()
        geometry = model.preprocessing.geometry(height, width)
        if mode == "tiles":
            tile = model.preprocessing.crop
            count = len(tile_grid(geometry.height, geometry.width, tile, model.preprocessing.tile_overlap))
            batch, working = torch.zeros(count, 3, tile, tile), f"{count} tiles of {tile} × {tile}"
        else:
            batch, working = torch.zeros(1, 3, geometry.height, geometry.width), f"{geometry.height} × {geometry.width}"
        with torch.no_grad():
            features = model.features(batch)
            feature_mib = sum(feature.numel() for feature in features) * 4 / 2 ** 20
        milliseconds = round(time_call(partial(model.features, batch), repeats, warmup=1), 1) if measure else None
        costs.append(ResizeModeCost(mode, working, round(geometry.inspected_fraction, 3),
                                    int(batch.shape[0] * batch.shape[2] * batch.shape[3]), round(feature_mib, 1),
                                    milliseconds))
    return costs
