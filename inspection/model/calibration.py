"""Calibration: the thresholds a model decides with, and the fixed scale its scores are shown on.

Both come from good images the model did not fit (a seeded held-out share of the training images): the image
threshold at a target image FPR, the pixel threshold at a target pixel FPR, and one affine normalisation per
level that puts the threshold at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelFileError
from ..scores.thresholds import (
    ScoreScale,
    pixel_threshold_at_fpr,
    rate_above,
    score_quantiles,
    threshold_at_fpr,
    validate_fpr,
)
from .fields import require_keys, require_mapping, require_no_other_keys, require_number, require_numbers, require_texts


@dataclass
class Calibration:
    """Thresholds (raw score units; defect iff score > threshold) and the fixed score normalisation."""

    image_threshold: float
    pixel_threshold: float
    image_fpr: float
    pixel_fpr: float
    image_scale: ScoreScale
    pixel_scale: ScoreScale
    heldout_scores: list[float] = field(default_factory=list)
    heldout_files: list[str] = field(default_factory=list)
    heldout_pixel_quantiles: list[float] = field(default_factory=list)
    f1_image_threshold: float | None = None
    f1_pixel_threshold: float | None = None

    @classmethod
    def from_good(cls, image_scores: np.ndarray, maps: np.ndarray, image_fpr: float, pixel_fpr: float,
                  files: Sequence[str] = ()) -> Calibration:
        """Thresholds and scales from the scores and maps of held-out good images."""
        image_threshold = threshold_at_fpr(image_scores, image_fpr)
        pixel_threshold = pixel_threshold_at_fpr(maps, pixel_fpr)
        # Image scores: the lowest good score → 0; pixels: the median good pixel → 0 (a calm background).
        image_scale = ScoreScale.from_reference(float(np.min(image_scores)), image_threshold)
        pixel_scale = ScoreScale.from_reference(float(np.nanmedian(maps)), pixel_threshold)
        return cls(image_threshold, pixel_threshold, image_fpr, pixel_fpr, image_scale, pixel_scale,
                   [float(score) for score in image_scores], list(files), score_quantiles(maps))

    # --- file form --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["image_scale"] = self.image_scale.to_dict()
        values["pixel_scale"] = self.pixel_scale.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str = "calibration") -> Calibration:
        """The calibration of a model file's header, every field checked (ModelFileError naming the field)."""
        values = require_mapping(values, where)
        required = ("image_threshold", "pixel_threshold", "image_fpr", "pixel_fpr", "image_scale", "pixel_scale")
        require_keys(values, required, where)
        require_no_other_keys(values, tuple(cls.__dataclass_fields__), where)
        numbers = {key: require_number(values[key], f"{where}.{key}") for key in required[:4]}
        for key in ("image_fpr", "pixel_fpr"):
            try:
                validate_fpr(numbers[key])
            except ValueError as error:
                raise ModelFileError(f"field '{where}.{key}': {error}") from None
        scales = {}
        for key in ("image_scale", "pixel_scale"):
            scale = require_mapping(values[key], f"{where}.{key}")
            require_keys(scale, ("offset", "scale"), f"{where}.{key}")
            offset = require_number(scale["offset"], f"{where}.{key}.offset")
            factor = require_number(scale["scale"], f"{where}.{key}.scale")
            if factor <= 0:
                raise ModelFileError(f"field '{where}.{key}.scale' must be > 0, got {factor!r}")
            scales[key] = ScoreScale(offset, factor)
        return cls(**numbers, **scales,
                   heldout_scores=require_numbers(values.get("heldout_scores", []), f"{where}.heldout_scores"),
                   heldout_files=require_texts(values.get("heldout_files", []), f"{where}.heldout_files"),
                   heldout_pixel_quantiles=require_numbers(values.get("heldout_pixel_quantiles", []),
                                                           f"{where}.heldout_pixel_quantiles"),
                   f1_image_threshold=require_number(values.get("f1_image_threshold"), f"{where}.f1_image_threshold",
                                                     allow_none=True),
                   f1_pixel_threshold=require_number(values.get("f1_pixel_threshold"), f"{where}.f1_pixel_threshold",
                                                     allow_none=True))

    # --- reading --------------------------------------------------------------------------------------

    @property
    def normalized_image_threshold(self) -> float:
        return float(self.image_scale.normalize(self.image_threshold))

    @property
    def normalized_pixel_threshold(self) -> float:
        return float(self.pixel_scale.normalize(self.pixel_threshold))

    def heldout_fpr(self, image_threshold: float | None = None) -> float:
        """Image FPR measured on the held-out good images at a threshold (the saved one by default)."""
        threshold = self.image_threshold if image_threshold is None else image_threshold
        scores = np.asarray(self.heldout_scores)
        return float(np.mean(scores > threshold)) if scores.size else float("nan")

    def heldout_pixel_fpr(self, pixel_threshold: float | None = None) -> float:
        """Pixel FPR on the held-out good images at a threshold (from their saved score quantiles)."""
        threshold = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        return rate_above(self.heldout_pixel_quantiles, threshold)
