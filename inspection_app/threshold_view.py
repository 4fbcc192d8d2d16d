"""What the Threshold page shows of one model at one level (image verdict or pixel mask), computed without
Streamlit: the slider's range on the model's scale, the rates at a threshold, histograms, the ROC curve."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inspection.model.calibration import Calibration
from inspection.model.header import ModelHeader
from inspection.model.operating import (
    OperatingPoint,
    PixelSummary,
    ScoreTable,
    image_operating_point,
    image_roc,
    image_threshold_for_fpr,
    pixel_operating_point,
    pixel_roc,
    pixel_summary,
    pixel_threshold_for_fpr,
    recorded_test_scores,
)
from inspection.results.numbers import score_text
from inspection.scores.metrics import image_auroc
from inspection.scores.thresholds import ScoreScale, conformal_threshold

LEVELS = ("image", "pixel")


def confusion_rows(point: OperatingPoint, counts: bool = True) -> list[dict[str, Any]]:
    """A 2×2 confusion matrix as table rows (actual × predicted)."""
    matrix = point.confusion
    if not matrix:
        return []

    def shown(value: float) -> Any:
        return int(round(value)) if counts else f"{value:.2%}"

    return [{"actual": "defect", "predicted defect": shown(matrix["tp"]), "predicted good": shown(matrix["fn"])},
            {"actual": "good", "predicted defect": shown(matrix["fp"]), "predicted good": shown(matrix["tn"])}]


def slider_bounds(values: Iterable[float], threshold: float) -> tuple[float, float]:
    """A slider range (normalised units) covering the scores and the threshold, with a margin."""
    finite = np.asarray([value for value in values if math.isfinite(value)] + [threshold, 0.0, 1.0], np.float64)
    low, high = float(finite.min()), float(finite.max())
    margin = 0.05 * (high - low or 1.0)
    return round(low - margin, 3), round(high + margin, 3)


#: The range of the page's target-FPR field.
FIELD_RATE_RANGE = (1e-4, 0.9999)


def field_rate(rate: float, fallback: float) -> float:
    """A rate as the target-FPR field holds it: within its range, rounded as it shows it (an unrounded value would
    read as an edit and move the threshold again); `fallback` when the rate is undefined (NaN)."""
    if not math.isfinite(rate):
        return fallback
    low, high = FIELD_RATE_RANGE
    return round(float(min(max(rate, low), high)), 4)


def format_rate(value: float) -> str:
    """A rate as a percentage; '—' when it is undefined (NaN)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.1%}"


@dataclass
class ThresholdLevel:
    """One model at one level: its calibration, scale, saved threshold and recorded test scores."""

    level: str  # "image" | "pixel"
    calibration: Calibration
    table: ScoreTable
    summary: PixelSummary
    recorded_pixel_auroc: float | None = None
    #: Where the good images the thresholds are measured on came from, when not the test split.
    unseen_good_source: str = ""

    @property
    def unseen_good_words(self) -> str:
        """What the good images of the recorded scores are, e.g. 'good test images'."""
        if self.unseen_good_source:
            return "good training images held out from fitting and calibration alike (there is no test split)"
        return "good test images, which neither fitting nor calibration saw"

    @property
    def image_level(self) -> bool:
        return self.level == "image"

    @property
    def scale(self) -> ScoreScale:
        return self.calibration.image_scale if self.image_level else self.calibration.pixel_scale

    @property
    def saved_raw(self) -> float:
        return self.calibration.image_threshold if self.image_level else self.calibration.pixel_threshold

    @property
    def saved_normalised(self) -> float:
        return float(self.scale.normalize(self.saved_raw))

    @property
    def set_by_hand(self) -> bool:
        """Whether the saved threshold of this level was set by hand (saved from this page)."""
        return self.calibration.image_set_by_hand if self.image_level else self.calibration.pixel_set_by_hand

    @property
    def saved_target_fpr(self) -> float:
        """The target-FPR field's first value. Image level: the saved threshold's target; for one set by hand,
        which had none, what it keeps — the promise on new good parts. Pixel level: the rate the field shows as the
        threshold moves, the held-out good pixels' rate above the saved threshold — not the target of fit, which a
        threshold set by false regions per good image never aimed at (5 % beside a measured 0.2 %)."""
        calibration = self.calibration
        if not self.image_level:
            return field_rate(calibration.heldout_pixel_fpr(), field_rate(calibration.pixel_fpr, FIELD_RATE_RANGE[1]))
        if not self.set_by_hand:
            return float(calibration.image_fpr)
        return field_rate(calibration.image_target_fpr, FIELD_RATE_RANGE[1])

    def target_note(self, target_fpr: float, raw_threshold: float) -> str | None:
        """Why the image threshold promises more than the target field asks, when it does: the held-out good images
        are too few for that target (the words of `ConformalThreshold.describe`, as the model file and the Train
        page state them). None at pixel level, when the target is kept, or when the threshold is not the one the
        target sets (moved since)."""
        heldout = self.calibration.heldout_scores
        if not self.image_level or not heldout:
            return None
        try:
            conformal = conformal_threshold(heldout, float(target_fpr))
        except ValueError:
            return None
        # The field rounds to 4 decimals: a promise that rounds to the target keeps it.
        if field_rate(conformal.promised_fpr, math.nan) <= target_fpr or not math.isclose(
                conformal.threshold, raw_threshold, rel_tol=1e-9, abs_tol=1e-12):
            return None
        return (f"{conformal.describe()}. More held-out good images would keep it: a larger hold-out share when "
                "training, or a recalibration on a larger folder of good parts (below).")

    @property
    def saved_words(self) -> str:
        """How the saved threshold was set and what it keeps, for the page: "set by hand" and its promise on new
        good parts (from how many held-out good images), or the rule and target of fit."""
        calibration = self.calibration
        if self.image_level:
            if self.set_by_hand:
                promise = calibration.image_promise_at()
                return (f"The saved image threshold was set by hand. It promises at most {promise.promised_fpr:.1%} "
                        f"false alarms on new good parts, on average (split-conformal, from the {promise.n_good} "
                        f"good images held out from fitting; {promise.n_above} of them score above it).")
            rule = {"conformal": f"set by the split-conformal rule for a {calibration.image_fpr:.1%} target",
                    "empirical": "set at fit (empirical rule of files of 0.1)"}.get(calibration.image_rule, "set")
            return f"The saved image threshold was {rule}: {calibration.describe_image_threshold()}."
        if self.set_by_hand:
            return (f"The saved pixel threshold was set by hand: {calibration.pixel_fpr:.2%} of the pixels of the "
                    f"good images held out from fitting lie above it.")
        return f"The saved pixel threshold was set by its rule: {calibration.describe_pixel_threshold()}."

    @property
    def has_test(self) -> bool:
        """Whether the test split had both kinds (images; or good and defect pixels) when it was evaluated."""
        return self.table.has_both_classes if self.image_level else self.summary.available

    def slider_range(self) -> tuple[float, float]:
        """The slider's bounds on the model's scale: every recorded score and the saved threshold."""
        if self.image_level:
            values = list(self.scale.normalize(self.table.scores)) + list(
                self.scale.normalize(self.calibration.heldout_scores))
        else:
            values = list(self.scale.normalize(self.summary.good[::10])) + list(
                self.scale.normalize(self.summary.defect[::10]))
        return slider_bounds(values, self.saved_normalised)

    def decision_range(self) -> tuple[float, float]:
        """The slider's zoomed bounds: where the choice is made — from the low end of the scores to where the good
        scores end and half the defects are passed, always with the saved threshold (0.5) inside."""
        scale = self.scale
        if self.image_level:
            good = np.concatenate([self.table.good, np.asarray(self.calibration.heldout_scores, np.float64)])
            defect = self.table.defect
        else:
            good, defect = self.summary.good, self.summary.defect
            if not good.size:
                good = np.asarray(self.calibration.heldout_pixel_quantiles, np.float64)
        good, defect = scale.normalize(good), scale.normalize(defect)
        everything = np.concatenate([good, defect])
        if not everything.size:
            return self.slider_range()
        low = min(float(np.quantile(everything, 0.01)), 0.0)
        high = max(float(np.quantile(good, 0.995)) if good.size else 1.0,
                   float(np.quantile(defect, 0.5)) if defect.size else 1.0, 1.0)
        full_low, full_high = self.slider_range()
        margin = 0.05 * (high - low)
        return max(full_low, round(low - margin, 3)), min(full_high, round(high + margin, 3))

    def errors_at(self, raw_threshold: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Test images judged wrongly at a raw image threshold: (false alarms, misses), worst first."""
        flagged = self.calibration.is_defect(self.table.scores, threshold=raw_threshold)
        records = [{"file": file, "type": kind, "score": float(score), "label": int(label), "defect": bool(defect)}
                   for file, kind, score, label, defect in zip(self.table.files, self.table.types, self.table.scores,
                                                               self.table.labels, flagged)]
        false_alarms = sorted((r for r in records if r["label"] == 0 and r["defect"]), key=lambda r: -r["score"])
        misses = sorted((r for r in records if r["label"] == 1 and not r["defect"]), key=lambda r: r["score"])
        return false_alarms, misses

    def error_caption(self, record: dict[str, Any]) -> str:
        """A short caption of a wrongly judged test image: its type, file stem and score on the model's scale."""
        stem = record["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"{record['type']}/{stem} · score {score_text(self.scale.normalize(record['score']))}"

    def raw(self, normalised: float) -> float:
        return float(self.scale.denormalize(normalised))

    def point(self, raw_threshold: float) -> OperatingPoint:
        """Rates on the test split (and the held-out good images) at a raw threshold."""
        if self.image_level:
            return image_operating_point(self.table, self.calibration, raw_threshold)
        return pixel_operating_point(self.summary, self.calibration, raw_threshold)

    def threshold_for_fpr(self, target_fpr: float) -> float:
        """The raw threshold meeting a target FPR on the held-out good images (or pixels)."""
        if self.image_level:
            return image_threshold_for_fpr(self.calibration, target_fpr)
        return pixel_threshold_for_fpr(self.calibration, target_fpr)

    def histogram(self) -> dict[str, Any]:
        """Good and defect values on the model's scale, a title, and whether they are quantiles (pixels)."""
        scale = self.scale
        if self.image_level:
            good = self.table.good if self.table.scores.size else np.asarray(self.calibration.heldout_scores)
            return {"good": scale.normalize(good), "defect": scale.normalize(self.table.defect),
                    "title": "Image scores of the test split" if self.table.scores.size
                    else "Image scores of held-out good images", "weights_are_quantiles": False}
        good = self.summary.good if self.summary.good.size else np.asarray(self.calibration.heldout_pixel_quantiles)
        return {"good": scale.normalize(good), "defect": scale.normalize(self.summary.defect),
                "title": "Pixel scores of the test split", "weights_are_quantiles": True}

    def roc(self) -> tuple[dict[str, np.ndarray], float | None]:
        """The test split's ROC curve and its AUROC."""
        if self.image_level:
            return image_roc(self.table), image_auroc(self.table.scores, self.table.labels)
        return pixel_roc(self.summary), self.recorded_pixel_auroc

    @property
    def counts_known(self) -> bool:
        """Whether the confusion matrix holds counts (images, or pixels with recorded counts) or shares."""
        return self.image_level or bool(self.summary.counts)

    def is_saved(self, raw_threshold: float) -> bool:
        return math.isclose(raw_threshold, self.saved_raw, rel_tol=1e-9, abs_tol=1e-12)


def threshold_level(header: ModelHeader, level: str) -> ThresholdLevel:
    """The Threshold page's view of a model file's header at one level."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if header.calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    pixel_auroc = header.info.metrics.get("pixel_auroc")
    return ThresholdLevel(level, header.calibration, recorded_test_scores(header.info), pixel_summary(header.info),
                          float(pixel_auroc) if isinstance(pixel_auroc, (int, float)) else None,
                          str(header.info.metrics.get("unseen_good_source") or ""))
