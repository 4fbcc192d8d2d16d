"""One image through a model, as a person sees it: score and verdict at the saved threshold, the heatmap on the
original image, defect regions as boxes — and the picture of it, drawn the same way by the CLI, the app and
the README's figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.preprocess import DISPLAY_MAX_SIDE as DISPLAY_MAX_SIDE  # where the scoring paths have read it from
from ..data.preprocess import Geometry
from ..model.calibration import Calibration
from ..model.prediction import Prediction
from ..model.views import Panel
from ..scores.regions import MIN_REGION_AREA, Region
from .numbers import round_score, score_text
from .pictures import box_to_original, colorize_range, draw_boxes, mask_overlay, overlay

#: The verdict for an image the model cannot judge: a picture unlike its training data (`model.familiarity`). One
#: word, as GOOD and DEFECT are, so that it fits where they do; the page's note says the rest.
UNLIKE_TRAINING = "UNLIKE"
#: The verdicts as `predict`'s CSV writes them, and as the pages show them.
VERDICT_WORDS = {"good": "GOOD", "defect": "DEFECT", "unlike": UNLIKE_TRAINING}
#: What the pages say a verdict means.
VERDICT_HELP = ("DEFECT when the score is above the saved threshold (0.5), GOOD below it; UNLIKE when the picture is "
                "unlike the training data — too far from every training image for either to be said (a picture "
                "of another part, a blank or a test pattern).")


def verdict_label(is_defect: bool, unlike_training: bool = False) -> str:
    """The word a page shows for a verdict."""
    return UNLIKE_TRAINING if unlike_training else "DEFECT" if is_defect else "GOOD"


def verdict_word(is_defect: bool, unlike_training: bool = False) -> str:
    """The verdict as `predict`'s CSV writes it: good, defect or unlike."""
    return "unlike" if unlike_training else "defect" if is_defect else "good"


@dataclass
class ImageResult:
    """One image through a model: score and verdict, heatmap and defect regions on the original image."""

    name: str
    image: np.ndarray  # original RGB
    score: float  # normalised: the model's image threshold is 0.5
    raw_score: float
    is_defect: bool
    heatmap: np.ndarray  # normalised map on the original grid; NaN = not inspected
    regions: list[Region]  # at the working resolution, normalised scores
    boxes: list[tuple[int, int, int, int]]  # the regions' boxes in original pixels
    geometry: Geometry
    reconstruction: np.ndarray | None = None  # working resolution RGB, for methods that reconstruct
    colour_max: float = 1.0  # the top of the heatmap's colour scale (the threshold 0.5 is its middle)
    panels: list[Panel] = field(default_factory=list)  # the method's views, when the prediction was asked for them
    #: (height, width) of the file itself when `image` is a copy shrunk for display and scoring (DISPLAY_MAX_SIDE):
    #: what areas are reported in. None: `image` is the file at its own size.
    original_size: tuple[int, int] | None = None
    #: True when the picture is unlike the training data (`model.familiarity`): no GOOD or DEFECT can be said.
    unlike_training: bool = False
    #: Its distance to the nearest training image and the line beyond which it is unlike them (None: no check).
    familiarity_distance: float | None = None
    familiarity_threshold: float | None = None

    @property
    def verdict(self) -> str:
        return verdict_label(self.is_defect, self.unlike_training)

    @property
    def verdict_word(self) -> str:
        """The verdict as `predict`'s CSV writes it."""
        return verdict_word(self.is_defect, self.unlike_training)

    @property
    def fully_inspected(self) -> bool:
        """Whether the model saw every pixel of the image (no crop left a border out)."""
        return not bool(np.isnan(self.heatmap).any())

    def overlay(self, with_boxes: bool = True) -> np.ndarray:
        """Heatmap over the image, each defect region outlined and labelled with its peak score."""
        blended = overlay(self.image, self.heatmap, vmax=self.colour_max)
        if not with_boxes or not self.boxes:
            return blended
        return draw_boxes(blended, self.boxes, [score_text(region.max_score) for region in self.regions])

    def region_rows(self, brief: bool = False) -> list[dict[str, Any]]:
        """A table of the regions, the most telling columns first: peak score, area and box in the file's own pixels
        (also when it was shrunk for display and scoring), mean score (not when `brief`)."""
        geometry = self.geometry
        height, width = self.original_size or (geometry.original_height, geometry.original_width)
        # One working pixel in the file's pixels: through the resize, then back through any shrink for display.
        pixel_area = (height / geometry.resized_height) * (width / geometry.resized_width)
        rows = [{"region": index + 1, "max score": round_score(region.max_score),
                 "area (px)": int(round(region.area * pixel_area)), "box": self._box_text(box),
                 "mean score": round_score(region.mean_score)}
                for index, (region, box) in enumerate(zip(self.regions, self.boxes))]
        return [{key: value for key, value in row.items() if key != "mean score"} for row in rows] if brief else rows

    def box_in_file(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A box of `boxes` (the shown image's pixels) in the file's own pixels (rounded outwards)."""
        if self.original_size is None:
            return tuple(int(value) for value in box)
        height, width = self.original_size
        factor_y, factor_x = height / self.image.shape[0], width / self.image.shape[1]
        return (int(np.floor(box[0] * factor_x)), int(np.floor(box[1] * factor_y)),
                min(width, int(np.ceil(box[2] * factor_x))), min(height, int(np.ceil(box[3] * factor_y))))

    def _box_text(self, box: tuple[int, int, int, int]) -> str:
        """A box of `boxes` (the shown image's pixels) as the table shows it: in the file's own pixels."""
        x0, y0, x1, y1 = self.box_in_file(box)
        return f"{x0},{y0} – {x1},{y1}"


def image_result(prediction: Prediction, index: int, image: np.ndarray, name: str,
                 pixel_threshold: float | None = None, min_area: int = MIN_REGION_AREA,
                 regions_when_good: bool = False, colour_max: float | None = None,
                 original_size: tuple[int, int] | None = None) -> ImageResult:
    """Everything the pages show about image `index` of a prediction (raw thresholds; the saved ones by default).

    Defect regions are listed only for images judged defects, unless `regions_when_good`: a part that passes
    has no defects to outline, only spots below the verdict (the Inspect page shows those on request). The
    colour scale reaches the model's own colour maximum unless `colour_max` sets a common one (Compare).
    `original_size` (height, width): the file's own size when `image` is a copy shrunk for display and scoring.
    """
    calibration = _require_calibration(prediction.calibration)
    raw_score = float(prediction.raw_scores[index])
    is_defect = calibration.is_defect(raw_score)
    unlike = bool(prediction.unlike_training[index])
    # A picture unlike the training data has no defects to outline: its map is shown, but nothing is boxed.
    regions = (prediction.regions(index, pixel_threshold=pixel_threshold, min_area=min_area)
               if (is_defect and not unlike) or regions_when_good else [])
    distance = (None if prediction.familiarity_distances is None
                else float(prediction.familiarity_distances[index]))
    geometry = prediction.geometries[index]
    reconstruction = prediction.reconstructions[index] if prediction.reconstructions is not None else None
    panels = list(prediction.panels[index]) if prediction.panels is not None else []
    return ImageResult(
        name=name, image=image, score=float(prediction.image_scores[index]), raw_score=raw_score,
        is_defect=is_defect, heatmap=prediction.map_on_original(index),
        regions=regions, boxes=[box_to_original(region, geometry) for region in regions], geometry=geometry,
        reconstruction=reconstruction, colour_max=calibration.colour_max if colour_max is None else colour_max,
        panels=panels, original_size=original_size, unlike_training=unlike, familiarity_distance=distance,
        familiarity_threshold=None if prediction.familiarity is None else prediction.familiarity.threshold)


def defect_mask_on_original(result: ImageResult, calibration: Calibration,
                            pixel_threshold: float | None = None) -> np.ndarray:
    """Binary defect mask on the original grid at a raw pixel threshold (the saved one by default)."""
    raw = calibration.pixel_threshold if pixel_threshold is None else float(pixel_threshold)
    normalised = float(calibration.pixel_scale.normalize(raw))
    heat = result.heatmap
    return np.greater(heat, normalised, where=~np.isnan(heat), out=np.zeros(heat.shape, bool))


def mask_picture(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """A mask shown over a dimmed copy of its image, so that its position on the part stays visible."""
    dimmed = (image.astype(np.float32) * 0.55).astype(np.uint8)
    return mask_overlay(dimmed, mask, color=color, alpha=0.65)


def panel_picture(panel: Panel) -> np.ndarray:
    """A method's panel as an RGB uint8 picture: a picture as it is, a float map in the heatmap colours over its
    `value_range` (shared by the panels of one image that give the same one) or its own minimum..maximum."""
    if not panel.is_map:
        return panel.image
    if panel.value_range is not None:
        low, high = panel.value_range
    else:
        finite = panel.image[np.isfinite(panel.image)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return colorize_range(panel.image, low, high)


def _require_calibration(calibration: Calibration | None) -> Calibration:
    if calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    return calibration


def unfamiliar_notes(result: ImageResult, calibration: Calibration, info: Mapping[str, Any],
                     dataset_category: str | None = None) -> list[str]:
    """Plain words when an image is unlike what the model was made for: beyond its familiarity line (the verdict
    then says so too), a model of another category than the images' dataset, or — for models made before the
    familiarity check — a score far beyond any it saw."""
    notes = []
    category = str(info.get("category") or "")
    of_category = f" ({category})" if category else ""
    if result.unlike_training:
        notes.append(f"This picture is unlike the model's training images{of_category}: its distance to the nearest "
                     f"of them is {result.familiarity_distance:.2f}, beyond the model's line of "
                     f"{result.familiarity_threshold:.2f}. The model cannot say whether it is GOOD or a DEFECT, and "
                     "its heatmap is not to be trusted. Is it a picture of this part, under the same camera and light "
                     "as the training images?")
    if dataset_category and category and dataset_category != category:
        notes.append(f"This model was trained on {category!r} images; these come from {dataset_category!r}. Its "
                     "scores mean little here: choose a model of this dataset in the sidebar, or train one (Train "
                     "page).")
    seen = [float(record["score"]) for record in info.get("test_scores") or []] + list(calibration.heldout_scores)
    if seen and not result.unlike_training and result.familiarity_distance is None:
        highest = float(calibration.image_scale.normalize(max(seen)))
        if result.score > 2 * max(highest, 1.0):
            notes.append(f"This image scores {result.score:.1f}, more than twice the highest score the model saw "
                         f"in its evaluation ({highest:.1f}): it may not show the kind of part the model was "
                         f"trained on{of_category}. (Models trained since the familiarity check came say so "
                         "in their verdict: train this one again to get it.)")
    return notes
