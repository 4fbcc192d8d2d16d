"""One image through a model, as a person sees it: score and verdict at the saved threshold, the heatmap on the
original image, defect regions as boxes — and the picture of it, drawn the same way by the CLI, the app and
the README's figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data.preprocess import Geometry
from .model.calibration import Calibration
from .model.prediction import Prediction
from .model.views import Panel
from .scores.regions import Region
from .visualize import box_to_original, draw_boxes, mask_overlay, overlay


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
    panels: list[Panel] = field(default_factory=list)  # the method's views, when the prediction was asked for them

    @property
    def verdict(self) -> str:
        return verdict_label(self.is_defect)

    def overlay(self, with_boxes: bool = True) -> np.ndarray:
        """Heatmap over the image, each defect region outlined and labelled with its peak score."""
        blended = overlay(self.image, self.heatmap)
        if not with_boxes or not self.boxes:
            return blended
        return draw_boxes(blended, self.boxes, [f"{region.max_score:.2f}" for region in self.regions])

    def region_rows(self) -> list[dict[str, Any]]:
        """A table of the regions: box in original pixels, area, peak and mean score."""
        scale = self.geometry.scale_x * self.geometry.scale_y
        return [{"region": index + 1, "box (x0, y0)–(x1, y1)": f"({box[0]}, {box[1]})–({box[2]}, {box[3]})",
                 "area (px)": int(round(region.area / scale)), "max score": round(region.max_score, 3),
                 "mean score": round(region.mean_score, 3)}
                for index, (region, box) in enumerate(zip(self.regions, self.boxes))]


def image_result(prediction: Prediction, index: int, image: np.ndarray, name: str,
                 pixel_threshold: float | None = None, min_area: int = 16,
                 regions_when_good: bool = False) -> ImageResult:
    """Everything the pages show about image `index` of a prediction (raw thresholds; the saved ones by default).

    Defect regions are listed only for images judged defects, unless `regions_when_good`: a part that passes
    has no defects to outline, only spots below the verdict (the Inspect page shows those on request).
    """
    calibration = _require_calibration(prediction.calibration)
    raw_score = float(prediction.raw_scores[index])
    is_defect = raw_score > calibration.image_threshold
    regions = (prediction.regions(index, pixel_threshold=pixel_threshold, min_area=min_area)
               if is_defect or regions_when_good else [])
    geometry = prediction.geometries[index]
    reconstruction = prediction.reconstructions[index] if prediction.reconstructions is not None else None
    panels = list(prediction.panels[index]) if prediction.panels is not None else []
    return ImageResult(
        name=name, image=image, score=float(prediction.image_scores[index]), raw_score=raw_score,
        is_defect=bool(is_defect), heatmap=prediction.map_on_original(index),
        regions=regions, boxes=[box_to_original(region, geometry) for region in regions], geometry=geometry,
        reconstruction=reconstruction, panels=panels)


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


def _require_calibration(calibration: Calibration | None) -> Calibration:
    if calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    return calibration
