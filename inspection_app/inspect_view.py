"""What the Inspect page shows beyond the pictures: the mask slider's range, the mask's overlap with the ground
truth in words and rows, the main pictures' layout (tall frames side by side), the method's panels arranged in
rows, the choices of a Grad-CAM explanation, the defect classifier fitted from the page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspection.data.datasets import Dataset
from inspection.explain.classifier import attach_defect_classifier, fit_defect_classifier
from inspection.explain.gradcam import Box, explanation_layers
from inspection.model.base import AnomalyModel
from inspection.model.views import Panel
from inspection.results.image import ImageResult
from inspection.results.numbers import score_text


def mask_slider_range(result: ImageResult) -> tuple[float, float]:
    """The pixel-threshold slider's bounds (model scale): from 0 to the highest score of this image or of the
    model's colour scale, whichever is higher — so every region can be tightened away."""
    finite = result.heatmap[np.isfinite(result.heatmap)]
    highest = float(finite.max()) if finite.size else 0.0
    return 0.0, float(math.ceil(max(highest, result.colour_max, 1.0) * 1.02 * 100) / 100)


def lowest_score(heatmap: np.ndarray) -> float | None:
    """The lowest inspected score of a heatmap (the colour bar marks scores below 0), None when nothing was
    inspected."""
    finite = heatmap[np.isfinite(heatmap)]
    return float(finite.min()) if finite.size else None


#: The metric's label against a ground truth with defects, and against an empty one (a good image).
OVERLAP_LABEL = "Mask vs ground truth"
GOOD_OVERLAP_LABEL = "Wrongly marked (good)"


def overlap_summary(overlap: dict[str, Any], marked_share: float) -> tuple[str, str, str]:
    """(the metric's label, value and help) for a mask compared with its ground truth; `marked_share` is the share
    of the image's pixels in the mask. Against an empty ground truth (a good image) an IoU is 0 whatever the mask
    marks (or undefined when it marks nothing): the value is then the share of the image wrongly marked, a short
    value under its own label (a long one is cut to "false-pos…" in a fifth of the page)."""
    if not overlap["truth_regions"]:
        return GOOD_OVERLAP_LABEL, f"{marked_share:.2%}", (
            "The ground truth has no defect (a good image): every pixel in the mask is a false positive. Share of "
            f"the image wrongly marked: {marked_share:.2%}, in {overlap['false_regions']} region(s).")
    found = sum(region["found"] for region in overlap["truth_regions"])
    value = "—" if math.isnan(overlap["iou"]) else f"IoU {overlap['iou']:.2f}"
    return OVERLAP_LABEL, value, (
        f"Ground-truth regions found: {found} of {len(overlap['truth_regions'])} (at least half of their pixels in "
        f"the mask); predicted regions touching no true defect: {overlap['false_regions']}.")


def truth_rows(overlap: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per ground-truth region: found or missed, and how much of it the mask covers."""
    return [{"ground-truth region": index + 1, "found": "yes" if region["found"] else "missed",
             "covered": f"{region['covered']:.0%}", "area (px)": region["area"]}
            for index, region in enumerate(overlap["truth_regions"])]


#: Panels shown side by side on the Inspect page.
PANELS_PER_ROW = 3

#: A frame this many times taller than wide (or more) is "tall": the Inspect page lays its four main pictures
#: (original, heatmap, mask, ground truth) in one row, so that a 500 × 1250 frame does not make the page four
#: screens tall with the defect below the fold.
TALL_RATIO = 1.3


def picture_rows(shape: Sequence[int]) -> list[int]:
    """How the Inspect page lays out its four main pictures for an image of `shape` (height, width, …): the number
    of columns of each row — one row of four for a tall frame (`TALL_RATIO`), two rows of two otherwise."""
    height, width = int(shape[0]), int(shape[1])
    return [4] if width > 0 and height / width > TALL_RATIO else [2, 2]


def is_wide(panel: Panel) -> bool:
    """A panel more than twice as wide as high (a strip of frames): it takes a row of its own."""
    height, width = panel.image.shape[:2]
    return width > 2 * height


def panel_rows(panels: Sequence[Panel], per_row: int = PANELS_PER_ROW) -> list[list[Panel]]:
    """The method's panels in order, in rows of up to `per_row`; a wide one (`is_wide`) gets a row of its own so
    that it is not shrunk to a column's width."""
    rows: list[list[Panel]] = []
    current: list[Panel] = []
    for panel in panels:
        if is_wide(panel):
            if current:
                rows.append(current)
                current = []
            rows.append([panel])
            continue
        current.append(panel)
        if len(current) == per_row:
            rows.append(current)
            current = []
    if current:
        rows.append(current)
    return rows


def layer_labels(model: AnomalyModel) -> dict[str, str]:
    """The layers Grad-CAM can look at, shallowest first, each with a label: {name: "blocks.4 (stride 16)"}."""
    return explanation_layers(model)


def explain_targets(result: ImageResult) -> dict[str, Box | None]:
    """The scores Grad-CAM can explain: the image score, and each listed region's (the map's maximum inside its
    box, in working-resolution pixels), labelled as the regions table numbers them."""
    targets: dict[str, Box | None] = {"the image score": None}
    for index, region in enumerate(result.regions):
        label = f"region {index + 1} (max {score_text(region.max_score)})"
        targets[label] = (region.x0, region.y0, region.x1, region.y1)
    return targets


def can_fit_classifier(dataset: Dataset | None) -> bool:
    """Whether the open dataset has labelled good and defect test images to fit a defect classifier on."""
    return dataset is not None and {sample.label for sample in dataset.test} == {0, 1}


def fit_classifier_on_dataset(model: AnomalyModel, dataset: Dataset, path: Path) -> dict[str, Any]:
    """Fit the model's defect classifier on the dataset's labelled test images (good and defect) and keep it in the
    model file; its record (counts, cross-validated accuracy)."""
    good = [sample.source for sample in dataset.test if sample.label == 0]
    defect = [sample.source for sample in dataset.test if sample.label == 1]
    fitted = fit_defect_classifier(model, good, defect, seed=model.seed)
    attach_defect_classifier(path, fitted)
    return fitted.record


def classifier_caption(record: dict[str, Any], probability: float) -> str:
    """What the CAM picture's caption says: the head's verdict and how it was fitted."""
    return (f"Defect probability {probability:.0%} · head at {record.get('layer')}, fitted on {record.get('n_good')} "
            f"good and {record.get('n_defect')} defect images (cross-validated accuracy "
            f"{record.get('cv_accuracy', float('nan')):.0%})")
