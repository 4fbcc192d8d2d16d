"""What the Inspect page shows beyond the pictures: the mask slider's range, the mask's overlap with the ground
truth in words and rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from inspection.results import ImageResult


def mask_slider_range(result: ImageResult) -> tuple[float, float]:
    """The pixel-threshold slider's bounds (model scale): from 0 to the highest score of this image or of the
    model's colour scale, whichever is higher — so every region can be tightened away."""
    finite = result.heatmap[np.isfinite(result.heatmap)]
    highest = float(finite.max()) if finite.size else 0.0
    return 0.0, float(math.ceil(max(highest, result.colour_max, 1.0) * 1.02 * 100) / 100)


def overlap_summary(overlap: dict[str, Any]) -> tuple[str, str]:
    """(the metric's value, its help) for a mask compared with its ground truth."""
    found = sum(region["found"] for region in overlap["truth_regions"])
    value = "—" if math.isnan(overlap["iou"]) else f"IoU {overlap['iou']:.2f}"
    return value, (f"Ground-truth regions found: {found} of {len(overlap['truth_regions'])} (at least half of their "
                   f"pixels in the mask); predicted regions touching no true defect: {overlap['false_regions']}.")


def truth_rows(overlap: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per ground-truth region: found or missed, and how much of it the mask covers."""
    return [{"ground-truth region": index + 1, "found": "yes" if region["found"] else "missed",
             "covered": f"{region['covered']:.0%}", "area (px)": region["area"]}
            for index, region in enumerate(overlap["truth_regions"])]
