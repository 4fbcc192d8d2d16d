"""One image through a model, as a person sees it: score and verdict at the saved threshold, the heatmap on the
original image, defect regions as boxes — and the picture of it, drawn the same way by the CLI, the app and
the README's figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.preprocess import Geometry
from ..model.calibration import Calibration
from ..model.prediction import Prediction
from ..model.views import Panel
from ..scores.regions import MIN_REGION_AREA, Region
from .pictures import box_to_original, colorize_range, draw_boxes, mask_overlay, overlay

#: Images are decoded for display and scoring at most this large (longer side, px): far above any model's working
#: resolution, and a 100 Mpx frame's heatmap then costs megabytes, not gigabytes.
DISPLAY_MAX_SIDE = 4096

def verdict_label(is_defect: bool) -> str:
    """The word a page shows for a verdict."""
    return "DEFECT" if is_defect else "GOOD"


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

    @property
    def verdict(self) -> str:
        return verdict_label(self.is_defect)

    @property
    def fully_inspected(self) -> bool:
        """Whether the model saw every pixel of the image (no crop left a border out)."""
        return not bool(np.isnan(self.heatmap).any())

    def overlay(self, with_boxes: bool = True) -> np.ndarray:
        """Heatmap over the image, each defect region outlined and labelled with its peak score."""
        blended = overlay(self.image, self.heatmap, vmax=self.colour_max)
        if not with_boxes or not self.boxes:
            return blended
        return draw_boxes(blended, self.boxes, [f"{region.max_score:.2f}" for region in self.regions])

    def region_rows(self, brief: bool = False) -> list[dict[str, Any]]:
        """A table of the regions, the most telling columns first: peak score, area and box in original pixels,
        mean score (not when `brief`)."""
        scale = self.geometry.scale_x * self.geometry.scale_y
        rows = [{"region": index + 1, "max score": round(region.max_score, 2),
                 "area (px)": int(round(region.area / scale)), "box": f"{box[0]},{box[1]} – {box[2]},{box[3]}",
                 "mean score": round(region.mean_score, 2)}
                for index, (region, box) in enumerate(zip(self.regions, self.boxes))]
        return [{key: value for key, value in row.items() if key != "mean score"} for row in rows] if brief else rows


def image_result(prediction: Prediction, index: int, image: np.ndarray, name: str,
                 pixel_threshold: float | None = None, min_area: int = MIN_REGION_AREA,
                 regions_when_good: bool = False, colour_max: float | None = None) -> ImageResult:
    """Everything the pages show about image `index` of a prediction (raw thresholds; the saved ones by default).

    Defect regions are listed only for images judged defects, unless `regions_when_good`: a part that passes
    has no defects to outline, only spots below the verdict (the Inspect page shows those on request). The
    colour scale reaches the model's own colour maximum unless `colour_max` sets a common one (Compare).
    """
    calibration = _require_calibration(prediction.calibration)
    raw_score = float(prediction.raw_scores[index])
    is_defect = calibration.is_defect(raw_score)
    regions = (prediction.regions(index, pixel_threshold=pixel_threshold, min_area=min_area)
               if is_defect or regions_when_good else [])
    geometry = prediction.geometries[index]
    reconstruction = prediction.reconstructions[index] if prediction.reconstructions is not None else None
    panels = list(prediction.panels[index]) if prediction.panels is not None else []
    return ImageResult(
        name=name, image=image, score=float(prediction.image_scores[index]), raw_score=raw_score,
        is_defect=is_defect, heatmap=prediction.map_on_original(index),
        regions=regions, boxes=[box_to_original(region, geometry) for region in regions], geometry=geometry,
        reconstruction=reconstruction, colour_max=calibration.colour_max if colour_max is None else colour_max,
        panels=panels)


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
    """Plain words when an image is unlike what the model was made for: a score far beyond any it saw, or a
    model of another category than the images' dataset."""
    notes = []
    category = str(info.get("category") or "")
    if dataset_category and category and dataset_category != category:
        notes.append(f"This model was trained on {category!r} images; these come from {dataset_category!r}. Its "
                     "scores mean little here: train a model on this dataset (Train page).")
    seen = [float(record["score"]) for record in info.get("test_scores") or []] + list(calibration.heldout_scores)
    if seen:
        highest = float(calibration.image_scale.normalize(max(seen)))
        if result.score > 2 * max(highest, 1.0):
            notes.append(f"This image scores {result.score:.1f}, more than twice the highest score the model saw "
                         f"in its evaluation ({highest:.1f}): it may not show the kind of part the model was "
                         f"trained on{f' ({category})' if category else ''}.")
    return notes
