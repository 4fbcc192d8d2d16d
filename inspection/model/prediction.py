"""A prediction: raw anomaly maps and image scores of a batch, with what is needed to normalise and show them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.preprocess import Geometry, map_to_original
from ..scores.regions import Region, find_regions
from .calibration import Calibration
from .familiarity import Familiarity
from .views import Panel


@dataclass
class Prediction:
    """Raw maps and scores of a batch of images, with what is needed to normalise and display them."""

    # [N, H, W] float32 at the working resolution; when sizes vary (aspect, tiles) each map at the top left of
    # one array as large as the largest, NaN around it and on padding.
    raw_maps: np.ndarray
    raw_scores: np.ndarray  # [N]
    geometries: list[Geometry]
    calibration: Calibration | None
    reconstructions: np.ndarray | None = None  # [N, H, W, 3] uint8, for methods that reconstruct
    #: Per image, what the method shows of its work (`views.Panel`, in display order); None unless asked for.
    panels: list[list[Panel]] | None = None
    #: [N] cosine distance of each image to the nearest good training image (`familiarity`); None when the model
    #: has no familiarity check (made before it, or without the descriptor's weights).
    familiarity_distances: np.ndarray | None = None
    familiarity: Familiarity | None = None

    @property
    def unlike_training(self) -> np.ndarray:
        """True where an image is unlike the training data (`Familiarity.is_unlike`); all False without a check."""
        if self.familiarity is None or self.familiarity_distances is None:
            return np.zeros(len(self.raw_scores), bool)
        return self.familiarity.is_unlike(self.familiarity_distances)

    @property
    def anomaly_maps(self) -> np.ndarray:
        """Maps on the model's fixed scale (pixel threshold at 0.5 after calibration); raw when uncalibrated."""
        if self.calibration is None:
            return self.raw_maps
        return self.calibration.pixel_scale.normalize(self.raw_maps).astype(np.float32)

    @property
    def image_scores(self) -> np.ndarray:
        """Scores on the model's fixed scale (saved image threshold at 0.5); raw when uncalibrated."""
        if self.calibration is None:
            return self.raw_scores
        return np.asarray(self.calibration.image_scale.normalize(self.raw_scores), dtype=np.float64)

    @property
    def verdicts(self) -> np.ndarray:
        """True where an image is a defect at the saved image threshold (`Calibration.is_defect`, the one rule)."""
        if self.calibration is None:
            raise ValueError("the model is not calibrated: fit it first")
        return self.calibration.is_defect(self.raw_scores)

    def regions(self, index: int, pixel_threshold: float | None = None, min_area: int = 16) -> list[Region]:
        """Defect regions of image `index` (boxes in working-resolution pixels, normalised scores)."""
        if self.calibration is None and pixel_threshold is None:
            raise ValueError("the model is not calibrated: give a threshold")
        raw_threshold = self.calibration.pixel_threshold if pixel_threshold is None else pixel_threshold
        if self.calibration is None:
            return find_regions(self.raw_maps[index], raw_threshold, min_area=min_area)
        scale = self.calibration.pixel_scale
        return find_regions(scale.normalize(self.raw_maps[index]), float(scale.normalize(raw_threshold)),
                            min_area=min_area)

    def map_on_original(self, index: int) -> np.ndarray:
        """The normalised map of image `index` placed on its original pixel grid (NaN = not inspected)."""
        return map_to_original(self.anomaly_maps[index], self.geometries[index])


def stack_maps(maps: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Per-image arrays [H, W, ...] as one [N, H, W, ...] array: stacked when they share a size, else each at the
    top left of one as large as the largest (NaN around float maps, 0 around pictures)."""
    if not maps:
        return np.zeros((0, *size), np.float32)
    shapes = {item.shape for item in maps}
    if len(shapes) == 1:
        return np.stack(maps)
    height, width = max(shape[0] for shape in shapes), max(shape[1] for shape in shapes)
    fill = np.nan if np.issubdtype(maps[0].dtype, np.floating) else 0
    canvas = np.full((len(maps), height, width, *maps[0].shape[2:]), fill, maps[0].dtype)
    for index, item in enumerate(maps):
        canvas[index, : item.shape[0], : item.shape[1]] = item
    return canvas
