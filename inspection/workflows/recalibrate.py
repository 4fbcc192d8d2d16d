"""Recalibrating a saved model on new good images, without refitting it: the thresholds only.

When the parts or the pictures change (new lighting, a new batch), good parts may score higher than the ones
the model was calibrated on, and false alarms rise above the target. Scoring a folder of new good images and
setting the thresholds again by the model's own rules (split-conformal for the verdict; false regions per
good image, or a pixel FPR, for the mask — those of fit for a threshold that was set by hand) fixes that. The
file is rewritten atomically; the replaced thresholds stay in its history, and `undo_recalibration` brings them
back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.images import list_images
from ..errors import DatasetError, ParameterError
from ..model.calibration import Calibration
from ..model.common_params import COMMON_PARAMS
from ..model.header import ModelHeader
from ..model.modelfile import resolve_model_path, rewrite_header
from ..progress import ProgressCallback
from ..registry import load_model
from ..scores.thresholds import (
    conformal_threshold,
    pixel_threshold_at_fpr,
    score_quantiles,
    threshold_at_false_regions,
)

#: Fewer new good images than this cannot set a meaningful threshold.
MIN_RECALIBRATION_IMAGES = 10


def good_images_in(folder: str | os.PathLike) -> list[Path]:
    """The images directly in a folder of new good parts (DatasetError when it is missing or holds none)."""
    path = Path(str(folder).strip()).expanduser()
    try:
        images = list_images(path)
    except OSError as error:
        raise DatasetError(f"{path}: {error.strerror or error}") from None
    if not images:
        raise DatasetError(f"{path}: the folder holds no images")
    return images


def recalibrate(path: str | os.PathLike, good_images: Sequence[Any], reason: str = "",
                progress: ProgressCallback | None = None) -> ModelHeader:
    """Set a saved model's thresholds again from new good images (paths or arrays); returns the new header."""
    if len(good_images) < MIN_RECALIBRATION_IMAGES:
        raise ParameterError(f"recalibration needs at least {MIN_RECALIBRATION_IMAGES} good images, got "
                             f"{len(good_images)}")
    path = resolve_model_path(path)
    model = load_model(path)
    prediction = model.predict(good_images, progress=progress)
    reason = reason or f"recalibrated on {len(good_images)} new good images"
    files = [str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
             for index, image in enumerate(good_images)]

    def change(header: ModelHeader) -> None:
        rules = model_rules(header.calibration, header.params)
        conformal = conformal_threshold(prediction.raw_scores, rules["image_fpr"])
        if rules["pixel_rule"] == "false_regions":
            pixel_threshold = threshold_at_false_regions(prediction.raw_maps, rules["false_regions"])
        else:
            pixel_threshold = pixel_threshold_at_fpr(prediction.raw_maps, rules["pixel_fpr"])
        header.calibration = header.calibration.recalibrated(
            conformal.threshold, pixel_threshold, reason, f"{conformal.describe()}; {reason}",
            prediction.raw_scores, files, score_quantiles(prediction.raw_maps), image_rule="conformal", **rules)

    return rewrite_header(path, change)


def model_rules(calibration: Calibration, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The rules a recalibration sets the thresholds by: the calibration's own, or, for a threshold set by hand
    (which has no target), the model's settings of fit (`settings`: the file's parameters)."""
    defaults = COMMON_PARAMS.defaults()
    if calibration.image_set_by_hand:
        image_fpr = float(settings.get("image_fpr", defaults["image_fpr"]))
    else:
        image_fpr = calibration.image_fpr
    if calibration.pixel_set_by_hand:
        pixel_rule = str(settings.get("pixel_rule", "pixel_fpr"))  # files of 0.1 set it by pixel FPR
        pixel_fpr = float(settings.get("pixel_fpr", defaults["pixel_fpr"]))
        false_regions = float(settings.get("false_regions", defaults["false_regions"]))
    else:
        pixel_rule, pixel_fpr, false_regions = calibration.pixel_rule, calibration.pixel_fpr, calibration.false_regions
    if pixel_rule == "false_regions":
        false_regions = defaults["false_regions"] if false_regions is None else false_regions
    else:
        false_regions = None
    return {"image_fpr": image_fpr, "pixel_rule": pixel_rule, "pixel_fpr": pixel_fpr,
            "false_regions": false_regions}


def undo_recalibration(path: str | os.PathLike) -> ModelHeader:
    """Bring back the thresholds a model had before its last recalibration."""

    def change(header: ModelHeader) -> None:
        try:
            header.calibration = header.calibration.undone()
        except ValueError as error:
            raise ParameterError(f"{Path(path).name}: {error}") from None

    return rewrite_header(resolve_model_path(path), change)
