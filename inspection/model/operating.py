"""Operating points of a calibrated model: what a threshold does on the scores its file records — FPR, TPR,
precision, a confusion matrix — and the ROC curves they lie on, at image level (per-image test scores) and
pixel level (pixel-score quantiles), beside the FPR on the held-out good images. Nothing here runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..scores.thresholds import (
    clopper_pearson,
    conformal_threshold,
    rate_above,
    rates_at_threshold,
    roc_curve_points,
    threshold_at_rate,
    validate_fpr,
)
from .calibration import Calibration


@dataclass
class ScoreTable:
    """Test-split image scores (raw units), with labels (1 = defect), file names and defect types."""

    scores: np.ndarray
    labels: np.ndarray
    files: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    @property
    def has_both_classes(self) -> bool:
        return bool(self.labels.size) and 0 < int(self.labels.sum()) < self.labels.size

    @property
    def good(self) -> np.ndarray:
        return self.scores[self.labels == 0]

    @property
    def defect(self) -> np.ndarray:
        return self.scores[self.labels == 1]


@dataclass(frozen=True)
class OperatingPoint:
    """Rates at one threshold: on the test split, plus the FPR measured on the held-out good images."""

    threshold: float  # raw
    fpr: float
    tpr: float
    precision: float
    confusion: dict[str, float]  # tp, fp, tn, fn (counts for images; shares of pixels for pixels)
    heldout_fpr: float
    #: Image level: the split-conformal bound on new good images' FPR at this threshold (NaN for pixels).
    promised_fpr: float = math.nan
    #: Image level: the exact 95 % interval of the FPR on the good test images, and how many there are.
    fpr_interval: tuple[float, float] = (math.nan, math.nan)
    n_good: int = 0


def recorded_test_scores(info: Mapping[str, Any]) -> ScoreTable:
    """The per-image test scores a model's metadata carries (empty when it was not evaluated)."""
    records = info.get("test_scores") or []
    return ScoreTable(np.array([float(record["score"]) for record in records], dtype=np.float64),
                      np.array([int(record["label"]) for record in records], dtype=np.int64),
                      [str(record.get("file", "")) for record in records],
                      [str(record.get("type", "")) for record in records])


def image_operating_point(table: ScoreTable, calibration: Calibration, threshold: float) -> OperatingPoint:
    """Image-level FPR, TPR, precision and confusion counts on the test split at a raw threshold."""
    if table.scores.size:
        rates = rates_at_threshold(table.scores, table.labels, threshold)
        confusion = {key: rates[key] for key in ("tp", "fp", "tn", "fn")}
        fpr, tpr, precision = rates["fpr"], rates["tpr"], rates["precision"]
    else:
        confusion, fpr, tpr, precision = {}, math.nan, math.nan, math.nan
    good = table.good
    interval = clopper_pearson(int(calibration.is_defect(good, threshold=threshold).sum()), int(good.size))
    return OperatingPoint(float(threshold), fpr, tpr, precision, confusion, calibration.heldout_fpr(threshold),
                          calibration.image_promise_at(threshold).promised_fpr, interval, int(good.size))


def promise_check(target_fpr: float, point: OperatingPoint) -> tuple[str, str] | None:
    """("warning" | "info", words for a line operator) when the good test images disagree with the promise: the
    target lies outside their 95 % interval. None when they agree, or when there are no good test images."""
    low, high = point.fpr_interval
    if not point.n_good or not math.isfinite(low):
        return None
    measured = (f"{point.fpr:.1%} of the {point.n_good} unseen good parts are flagged (95 % interval {low:.1%} to "
                f"{high:.1%})")
    if low > target_fpr:
        return ("warning", f"{measured}: more false alarms than the {target_fpr:.1%} promised. The good parts now "
                "score higher than the ones the model was calibrated on — a change of lighting, camera or batch "
                "would do that. Recalibrate on a folder of recent good parts (below), or retrain.")
    if high < target_fpr:
        return ("info", f"{measured}: fewer false alarms than the {target_fpr:.1%} allowed; a lower threshold "
                "would catch more defects within the target.")
    return None


def image_roc(table: ScoreTable) -> dict[str, np.ndarray]:
    """ROC points of the test split (FPR, TPR, raw thresholds)."""
    return roc_curve_points(table.scores, table.labels)


def image_threshold_for_fpr(calibration: Calibration, target_fpr: float) -> float:
    """The raw image threshold that promises at most the target FPR on new good images (split-conformal, from
    the held-out good scores)."""
    validate_fpr(target_fpr)
    if not calibration.heldout_scores:
        raise ValueError("the model file has no held-out good scores to set a threshold from")
    return conformal_threshold(calibration.heldout_scores, target_fpr).threshold


@dataclass
class PixelSummary:
    """Pixel-score quantiles of the test split's good and defect pixels (raw units)."""

    good: np.ndarray
    defect: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)  # "good"/"defect" pixel counts when recorded

    @property
    def available(self) -> bool:
        return bool(self.good.size) and bool(self.defect.size)


def pixel_summary(info: Mapping[str, Any]) -> PixelSummary:
    """The pixel-score quantiles (and counts, when recorded) a model's metadata carries."""
    quantiles = info.get("pixel_quantiles") or {}
    counts = info.get("pixel_counts") or {}
    return PixelSummary(np.asarray(quantiles.get("good") or [], np.float64),
                        np.asarray(quantiles.get("defect") or [], np.float64),
                        {key: int(value) for key, value in counts.items()})


def pixel_roc(summary: PixelSummary) -> dict[str, np.ndarray]:
    """Pixel ROC from the saved quantiles: FPR and TPR at every quantile value, thresholds descending."""
    thresholds = np.unique(np.concatenate([summary.good, summary.defect]))[::-1]
    below = np.nextafter(thresholds[-1], -np.inf)
    thresholds = np.concatenate([[np.nextafter(thresholds[0], np.inf)], thresholds, [below]])
    return {"fpr": rate_above(summary.good, thresholds), "tpr": rate_above(summary.defect, thresholds),
            "threshold": thresholds}


def pixel_operating_point(summary: PixelSummary, calibration: Calibration, threshold: float) -> OperatingPoint:
    """Pixel-level rates at a raw threshold; precision needs the pixel counts (NaN without them)."""
    fpr = rate_above(summary.good, threshold) if summary.good.size else math.nan
    tpr = rate_above(summary.defect, threshold) if summary.defect.size else math.nan
    n_good, n_defect = summary.counts.get("good"), summary.counts.get("defect")
    if n_good and n_defect:
        tp, fp = tpr * n_defect, fpr * n_good
        precision = tp / (tp + fp) if tp + fp > 0 else math.nan
        confusion = {"tp": tp, "fp": fp, "tn": n_good - fp, "fn": n_defect - tp}
    else:
        precision = math.nan
        # Without counts, each row of the matrix is the share of that class's pixels.
        confusion = {"tp": tpr, "fn": 1 - tpr, "fp": fpr, "tn": 1 - fpr}
    return OperatingPoint(float(threshold), fpr, tpr, precision, confusion, calibration.heldout_pixel_fpr(threshold))


def pixel_threshold_for_fpr(calibration: Calibration, target_fpr: float) -> float:
    """The raw pixel threshold at a target FPR on the held-out good pixels (from their saved quantiles)."""
    validate_fpr(target_fpr)
    if not calibration.heldout_pixel_quantiles:
        raise ValueError("the model file has no held-out pixel scores to set a threshold from")
    return threshold_at_rate(calibration.heldout_pixel_quantiles, target_fpr)


def promise_report(calibration: Calibration, metrics: Mapping[str, Any]) -> str:
    """One paragraph: what the image threshold promises (how it was set: a threshold set by hand says so), and how
    it did on the unseen good test images."""
    words = f"Image threshold: {calibration.describe_image_threshold()}."
    if metrics.get("n_unseen_good"):
        low, high = metrics["fpr_unseen_good_ci"]
        where = "held-out verification images" if metrics.get("unseen_good_source") else "test images"
        words += (f" On {metrics['n_unseen_good']} unseen good {where}: {metrics['fpr_unseen_good']:.1%} flagged "
                  f"(95 % interval {low:.1%} to {high:.1%}).")
    if calibration.pixel_set_by_hand:
        words += f" Pixel threshold {calibration.describe_pixel_threshold()}."
    if "false_boxes_per_good_image" in metrics:
        words += (f" Pixel threshold: {metrics['false_boxes_per_good_image']:.2f} false regions per unseen good "
                  f"image, {metrics.get('pixel_fpr_unseen_good', math.nan):.2%} of their pixels flagged.")
    return words

