"""The parameters every method shares — seed and device, preprocessing, how the thresholds are calibrated — declared
once in `CommonParams`, which `AnomalyModel` extends; each method adds its own and may change a default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.preprocess import INTENSITY_MODES, RESIZE_MODES
from ..device import DEVICE_CHOICES, resolve_device
from ..errors import ParameterError
from ..params import Estimator, ParamSet, setting


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


class CommonParams(Estimator):
    """The settings of every method: reproducibility and device, preprocessing, calibration of the thresholds."""

    param_rules = (_check_resize_and_crop, _check_device_available)

    seed: int = setting(0, "Random seed: fixes the held-out split and every random choice of the method; the same "
                        "seed on the same images gives the same model.", minimum=0, group="calibration")
    device: str = setting("auto", "Where to compute: 'auto' (GPU when there is one), 'cpu' or 'cuda'.",
                          choices=DEVICE_CHOICES, group="calibration")
    resize_mode: str = setting(
        "center_crop", "center_crop: resize the shorter side, cut the centre square; full: resize the whole frame to "
        "a square (nothing cut off); aspect: resize the shorter side, the longer follows the image (aspect kept, "
        "nothing cut off, padded to the backbone's stride); tiles: resize the shorter side, score overlapping crop × "
        "crop tiles and stitch their maps. Choose aspect or full when defects may lie near the edges, tiles for "
        "small defects on large frames.", choices=RESIZE_MODES, group="preprocessing")
    resize: int = setting(256, "Shorter side after resizing (center_crop, aspect and tiles modes). Larger shows "
                          "smaller defects, at a cost in time and memory.", minimum=16, maximum=4096,
                          group="preprocessing")
    crop: int = setting(224, "Working resolution: side of the square the model sees (the tile side in tiles mode).",
                        minimum=16, maximum=4096, group="preprocessing")
    tile_overlap: int = setting(32, "Tiles mode: pixels shared by neighbouring tiles (their maps are blended there).",
                                minimum=0, maximum=4095, group="preprocessing")
    intensity: str = setting(
        "none", "none: pixel values as they are; standardize: set each image's brightness and contrast to fixed "
        "values (for lighting that drifts between captures), from its mean and standard deviation; robust: the same "
        "from its median and interquartile range, which a large defect moves less.", choices=INTENSITY_MODES,
        group="preprocessing")
    holdout_fraction: float = setting(0.1, "Share of the good training images held out from fitting to calibrate "
                                      "the thresholds.", minimum=0.0, maximum=0.5, group="calibration")
    min_holdout: int = setting(0, "At least this many good images are held out (when there are enough; never more "
                               "than a third). 0: enough for the image target, so that its threshold is not the "
                               "single highest held-out score (39 at 5 %).", minimum=0, group="calibration",
                               note="0 = from the image target")
    image_fpr: float = setting(0.05, "Target false-positive rate of the image verdict on good images.",
                               minimum=1e-6, maximum=0.999999, group="calibration")
    pixel_rule: str = setting(
        "false_regions", "How the pixel threshold (defect mask and boxes) is set on the held-out good images: "
        "false_regions — at most 'false_regions' false defect regions per good image; pixel_fpr — at most "
        "'pixel_fpr' of the good pixels flagged.", choices=("false_regions", "pixel_fpr"), group="calibration")
    false_regions: float = setting(0.1, "Pixel threshold (rule false_regions): false defect regions allowed per good "
                                   "image, on average (0.1: one false box on every tenth good part).", minimum=0.0,
                                   maximum=100.0, group="calibration")
    pixel_fpr: float = setting(0.05, "Pixel threshold (rule pixel_fpr): target false-positive rate of the defect mask "
                               "on good pixels.", minimum=1e-6, maximum=0.999999, group="calibration")
    batch_size: int = setting(16, "Images per forward pass. Lower it when memory runs short.", minimum=1,
                              maximum=1024, group="calibration")


#: The shared declarations, for commands that check one value (e.g. predict's --batch-size) without a method.
COMMON_PARAMS: ParamSet = CommonParams.param_set()


def map_blur(default: float = 4.0) -> Any:
    """The `sigma` parameter of methods that blur their anomaly map (declared here once, each with its default)."""
    return setting(default, "Gaussian blur of the anomaly map, in pixels (0: none). Raise it when defects are large "
                   "and diffuse; lower it for thin or small ones, which a wide blur dims.", minimum=0.0,
                   maximum=64.0, note="0 = no blur")
