"""The parameters every method shares: seed and device, preprocessing, and how the thresholds are calibrated.

They are declared once here; each method adds its own (`inspection.methods`) and may change a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.preprocess import INTENSITY_MODES, RESIZE_MODES
from ..device import DEVICE_CHOICES, resolve_device
from ..errors import ParameterError
from ..params import Param, params


def _check_resize_and_crop(values: Mapping[str, Any]) -> None:
    if values["resize_mode"] == "center_crop" and values["resize"] < values["crop"]:
        raise ParameterError(f"parameter 'resize' ({values['resize']}) must be at least 'crop' ({values['crop']}) "
                             "in center_crop mode: the crop is cut out of the resized image")
    if values["resize_mode"] == "tiles" and values["resize"] < values["crop"]:
        raise ParameterError(f"parameter 'resize' ({values['resize']}) must be at least 'crop' ({values['crop']}) "
                             "in tiles mode: the tiles (crop × crop) are cut out of the resized image")
    if values["resize_mode"] == "tiles" and values["tile_overlap"] >= values["crop"]:
        raise ParameterError(f"parameter 'tile_overlap' ({values['tile_overlap']}) must be smaller than the tile "
                             f"side 'crop' ({values['crop']})")


def _check_device_available(values: Mapping[str, Any]) -> None:
    resolve_device(values["device"])


COMMON_PARAMS = params(
    Param("seed", int, 0, "Random seed: fixes the held-out split and every random choice of the method.",
          minimum=0, group="calibration"),
    Param("device", str, "auto", "Where to compute: 'auto' (GPU when there is one), 'cpu' or 'cuda'.",
          choices=DEVICE_CHOICES, group="calibration"),
    Param("resize_mode", str, "center_crop", "center_crop: resize the shorter side, cut the centre square; "
          "full: resize the whole frame to a square (nothing cut off); aspect: resize the shorter side, the longer "
          "follows the image (aspect kept, nothing cut off, padded to the backbone's stride); tiles: resize the "
          "shorter side, score overlapping crop × crop tiles and stitch their maps.", choices=RESIZE_MODES,
          group="preprocessing"),
    Param("resize", int, 256, "Shorter side after resizing (center_crop, aspect and tiles modes).", minimum=16,
          maximum=4096, group="preprocessing"),
    Param("crop", int, 224, "Working resolution: side of the square the model sees (the tile side in tiles mode).",
          minimum=16, maximum=4096, group="preprocessing"),
    Param("tile_overlap", int, 32, "Tiles mode: pixels shared by neighbouring tiles (their maps are blended "
          "there).", minimum=0, maximum=4095, group="preprocessing"),
    Param("intensity", str, "none", "none: pixel values as they are; standardize: set each image's brightness "
          "and contrast to fixed values (for lighting that drifts between captures), from its mean and standard "
          "deviation; robust: the same from its median and interquartile range, which a large defect moves less.",
          choices=INTENSITY_MODES,
          group="preprocessing"),
    Param("holdout_fraction", float, 0.1, "Share of the good training images held out from fitting to "
          "calibrate the thresholds.", minimum=0.0, maximum=0.5, group="calibration"),
    Param("min_holdout", int, 10, "At least this many good images are held out (when there are enough).",
          minimum=0, group="calibration"),
    Param("image_fpr", float, 0.05, "Target false-positive rate of the image verdict on good images.",
          minimum=1e-6, maximum=0.999999, group="calibration"),
    Param("pixel_rule", str, "false_regions", "How the pixel threshold (defect mask and boxes) is set on the "
          "held-out good images: false_regions — at most 'false_regions' false defect regions per good image; "
          "pixel_fpr — at most 'pixel_fpr' of the good pixels flagged.", choices=("false_regions", "pixel_fpr"),
          group="calibration"),
    Param("false_regions", float, 0.1, "Pixel threshold (rule false_regions): false defect regions allowed per "
          "good image, on average (0.1: one false box on every tenth good part).", minimum=0.0, maximum=100.0,
          group="calibration"),
    Param("pixel_fpr", float, 0.05, "Pixel threshold (rule pixel_fpr): target false-positive rate of the defect "
          "mask on good pixels.", minimum=1e-6, maximum=0.999999, group="calibration"),
    Param("batch_size", int, 16, "Images per forward pass.", minimum=1, maximum=1024, group="calibration"),
    rules=(_check_resize_and_crop, _check_device_available),
)
