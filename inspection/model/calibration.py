"""Calibration: the thresholds a model decides with, and the fixed scale its scores are shown on.

Both come from good images the model did not fit (a seeded held-out share of the training images): the image
threshold at a target image FPR; the pixel threshold at a target number of false regions per good image (or,
by choice, a target pixel FPR); and one affine normalisation per level. The normalisation always puts the
current threshold at 0.5: saving a new threshold moves the scale with it, so every page, picture and file
shows 0.5 where the model decides.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import ModelFileError
from ..scores.thresholds import (
    ScoreScale,
    pixel_threshold_at_fpr,
    rate_above,
    score_quantiles,
    threshold_at_false_regions,
    threshold_at_fpr,
    validate_fpr,
)
from .fields import require_keys, require_mapping, require_no_other_keys, require_number, require_numbers, require_texts

#: The colour scale's top when a model was not evaluated on defects (twice as far from calm as the threshold).
DEFAULT_COLOUR_MAX = 2.0


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
    #: How the pixel threshold was chosen: "false_regions" (per good image) or "pixel_fpr" (files of 0.1).
    pixel_rule: str = "pixel_fpr"
    false_regions: float | None = None
    #: The scores shown as 0: the lowest held-out image score, the median held-out pixel (a calm surface).
    image_reference: float | None = None
    pixel_reference: float | None = None
    #: The top of the heatmaps' colour scale (raw): a high quantile of the test split's defect pixels.
    pixel_display_max: float | None = None

    @classmethod
    def from_good(cls, image_scores: np.ndarray, maps: np.ndarray, image_fpr: float, pixel_fpr: float,
                  files: Sequence[str] = (), pixel_rule: str = "false_regions",
                  false_regions: float = 0.1) -> Calibration:
        """Thresholds and scales from the scores and maps of held-out good images."""
        image_threshold = threshold_at_fpr(image_scores, image_fpr)
        if pixel_rule == "false_regions":
            pixel_threshold = threshold_at_false_regions(maps, false_regions)
        elif pixel_rule == "pixel_fpr":
            pixel_threshold = pixel_threshold_at_fpr(maps, pixel_fpr)
        else:
            raise ValueError(f"unknown pixel threshold rule {pixel_rule!r}")
        image_reference, pixel_reference = float(np.min(image_scores)), float(np.nanmedian(maps))
        return cls(image_threshold, pixel_threshold, image_fpr, pixel_fpr,
                   ScoreScale.from_reference(image_reference, image_threshold),
                   ScoreScale.from_reference(pixel_reference, pixel_threshold),
                   [float(score) for score in image_scores], list(files), score_quantiles(maps),
                   pixel_rule=pixel_rule, false_regions=false_regions if pixel_rule == "false_regions" else None,
                   image_reference=image_reference, pixel_reference=pixel_reference)

    def with_thresholds(self, image_threshold: float | None = None,
                        pixel_threshold: float | None = None) -> Calibration:
        """The same calibration with new thresholds (raw units), its scales moved so they show them at 0.5."""
        image = self.image_threshold if image_threshold is None else float(image_threshold)
        pixel = self.pixel_threshold if pixel_threshold is None else float(pixel_threshold)
        image_reference = self.image_scale.offset if self.image_reference is None else self.image_reference
        pixel_reference = self.pixel_scale.offset if self.pixel_reference is None else self.pixel_reference
        with warnings.catch_warnings():
            # A threshold at or below the calm reference still gets a scale with the threshold at 0.5.
            warnings.simplefilter("ignore", RuntimeWarning)
            image_scale = ScoreScale.from_reference(image_reference, image)
            pixel_scale = ScoreScale.from_reference(pixel_reference, pixel)
        return replace(self, image_threshold=image, pixel_threshold=pixel, image_scale=image_scale,
                       pixel_scale=pixel_scale, image_reference=image_reference, pixel_reference=pixel_reference)

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
        pixel_rule = values.get("pixel_rule", "pixel_fpr")
        if pixel_rule not in ("false_regions", "pixel_fpr"):
            raise ModelFileError(f"field '{where}.pixel_rule' must be 'false_regions' or 'pixel_fpr', got "
                                 f"{pixel_rule!r}")
        optional = {key: require_number(values.get(key), f"{where}.{key}", allow_none=True)
                    for key in ("false_regions", "image_reference", "pixel_reference", "pixel_display_max")}
        return cls(**numbers, **scales, pixel_rule=pixel_rule, **optional,
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

    @property
    def colour_max(self) -> float:
        """The top of the heatmaps' colour scale on the model's scale (threshold 0.5): at least 1; 2 when unknown."""
        if self.pixel_display_max is None:
            return DEFAULT_COLOUR_MAX
        return max(1.0, float(self.pixel_scale.normalize(self.pixel_display_max)))

    def heldout_fpr(self, image_threshold: float | None = None) -> float:
        """Image FPR measured on the held-out good images at a threshold (the saved one by default)."""
        threshold = self.image_threshold if image_threshold is None else image_threshold
        scores = np.asarray(self.heldout_scores)
        return float(np.mean(scores > threshold)) if scores.size else float("nan")

    def heldout_pixel_fpr(self, pixel_threshold: float | None = None) -> float:
        """Pixel FPR on the held-out good images at a threshold (from their saved score quantiles)."""
        threshold = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        return rate_above(self.heldout_pixel_quantiles, threshold)
