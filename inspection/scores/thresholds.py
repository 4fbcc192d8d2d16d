"""Decision thresholds, operating-point rates and a fixed score normalisation.

Project-wide convention: an image or pixel is a **defect iff score > threshold**.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta

from .metrics import check_scores_and_labels
from .regions import MIN_REGION_AREA, count_regions

__all__ = [
    "validate_fpr",
    "threshold_at_fpr",
    "ConformalThreshold",
    "conformal_threshold",
    "conformal_promise",
    "ConformalPromise",
    "promise_at_threshold",
    "clopper_pearson",
    "pixel_threshold_at_fpr",
    "f1_optimal_threshold",
    "roc_curve_points",
    "rates_at_threshold",
    "ScoreScale",
]

_ScoreLike = TypeVar("_ScoreLike")


def validate_fpr(target_fpr: float) -> float:
    """Return ``target_fpr`` as a float if 0 < target_fpr < 1, else raise ValueError."""
    try:
        value = float(target_fpr)
    except (TypeError, ValueError):
        raise ValueError(
            f"target FPR must be between 0 and 1 (exclusive), got {target_fpr!r}"
        ) from None
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise ValueError(f"target FPR must be between 0 and 1 (exclusive), got {target_fpr!r}")
    return value


def _allowed_false_positives(n_scores: int, target_fpr: float) -> int:
    """Largest k with k / n <= target_fpr, robust to float rounding of target_fpr * n."""
    allowed = int(math.floor(target_fpr * n_scores))
    # target_fpr * n can land just below an integer (0.29 * 100 = 28.999...); check the neighbours
    # with the same float division a caller uses to measure the achieved FPR.
    if (allowed + 1) / n_scores <= target_fpr:
        allowed += 1
    while allowed > 0 and allowed / n_scores > target_fpr:
        allowed -= 1
    return allowed


def _threshold_from_values(values: np.ndarray, target_fpr: float) -> float:
    """(k+1)-th largest value with k = floor(target_fpr * n), via np.partition (no full sort)."""
    allowed = _allowed_false_positives(values.size, target_fpr)
    ascending_index = values.size - 1 - allowed
    return float(np.partition(values, ascending_index)[ascending_index])


def threshold_at_fpr(good_scores: ArrayLike, target_fpr: float) -> float:
    """Smallest good score t such that the fraction of good scores > t is <= target_fpr.

    With the good scores sorted descending s1 >= s2 >= ... >= sn and k = floor(target_fpr * n),
    the threshold is s_{k+1}; ties can make the achieved FPR lower than the target, never higher.
    """
    target_fpr = validate_fpr(target_fpr)
    scores = np.asarray(good_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("good_scores is empty: cannot calibrate a threshold without good samples")
    if np.isnan(scores).any():
        raise ValueError(f"good_scores contain {int(np.isnan(scores).sum())} NaN values")
    return _threshold_from_values(scores, target_fpr)


@dataclass(frozen=True)
class ConformalThreshold:
    """A threshold with a guarantee on new good images: P(new good score > threshold) <= promised_fpr."""

    threshold: float
    target_fpr: float
    n_good: int
    rank: int  # the threshold is the rank-th smallest of the good scores
    promised_fpr: float  # the target when it can be kept; else 1/(n+1), the best these n scores can promise

    @property
    def keeps_target(self) -> bool:
        return self.promised_fpr <= self.target_fpr

    def describe(self) -> str:
        """The promise in words, for the CLI, the pages and the model file."""
        if self.keeps_target:
            return (f"false alarms on new good parts at most {self.target_fpr:.1%} on average (split-conformal, "
                    f"from {self.n_good} held-out good images)")
        needed = math.ceil(1 / self.target_fpr - 1)
        return (f"{self.n_good} held-out good images are too few for a {self.target_fpr:.1%} target (it needs at "
                f"least {needed}): the threshold is the highest held-out score, and the promise weakens to at most "
                f"{self.promised_fpr:.1%} false alarms on new good parts")


def conformal_threshold(good_scores: ArrayLike, target_fpr: float) -> ConformalThreshold:
    """The split-conformal threshold: the ⌈(n+1)(1−α)⌉-th smallest of n held-out good scores.

    For a new good image exchangeable with the held-out ones, P(score > threshold) <= α. When
    ⌈(n+1)(1−α)⌉ > n (n < 1/α − 1), no held-out score is high enough: the threshold is the largest one and
    the promise is 1/(n+1) instead of α.
    """
    target_fpr = validate_fpr(target_fpr)
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("good_scores is empty: cannot calibrate a threshold without good samples")
    if np.isnan(scores).any():
        raise ValueError(f"good_scores contain {int(np.isnan(scores).sum())} NaN values")
    n = scores.size
    # The small tolerance keeps float noise ((n+1)(1-α) = 20.000000000000004) from adding a rank.
    rank = math.ceil((n + 1) * (1 - target_fpr) - 1e-9)
    if rank <= n:
        return ConformalThreshold(float(scores[rank - 1]), target_fpr, n, rank, target_fpr)
    return ConformalThreshold(float(scores[-1]), target_fpr, n, n, 1 / (n + 1))


def holdout_for_target(target_fpr: float) -> int:
    """The fewest held-out good images whose split-conformal threshold at `target_fpr` is not the highest of them:
    n + 1 >= 2/α (39 at 5 %).

    Below that the threshold is the single highest held-out score, and one unusual good part decides how many
    defects pass it (on KolektorSDD it swung over most of [0, 0.9] between draws of 23 held-out frames:
    `bench/holdout-draws/`)."""
    return math.ceil(2 / validate_fpr(target_fpr) - 1e-9) - 1


@dataclass(frozen=True)
class ConformalPromise:
    """What any threshold promises on new good images, from n held-out good scores: P(new good score > threshold)
    <= (#held-out above + 1) / (n + 1) (split-conformal), beside the share of held-out scores above it."""

    threshold: float
    n_good: int
    n_above: int

    @property
    def promised_fpr(self) -> float:
        return float(min(1.0, (self.n_above + 1) / (self.n_good + 1))) if self.n_good else float("nan")

    @property
    def heldout_fpr(self) -> float:
        """The share of the held-out good scores above the threshold."""
        return self.n_above / self.n_good if self.n_good else float("nan")

    def describe(self) -> str:
        """The promise in words, for the pages and the model file."""
        return (f"false alarms on new good parts at most {self.promised_fpr:.1%} on average (split-conformal, from "
                f"{self.n_good} held-out good images, {self.n_above} of them above the threshold)")


def promise_at_threshold(good_scores: ArrayLike, threshold: float) -> ConformalPromise:
    """The split-conformal promise of a threshold chosen any way (by hand, say), from held-out good scores."""
    scores = np.asarray(good_scores, dtype=np.float64).ravel()
    return ConformalPromise(float(threshold), int(scores.size), int((scores > threshold).sum()))


def conformal_promise(good_scores: ArrayLike, threshold: float) -> float:
    """The split-conformal bound on the FPR of new good images at any threshold: (#held-out above + 1) / (n + 1)."""
    return promise_at_threshold(good_scores, threshold).promised_fpr


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) confidence interval of a rate measured as successes / trials."""
    if trials <= 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return low, high


def _finite_pixels(good_maps: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    """All finite pixel values of one array or of a sequence of maps (sizes may differ)."""
    if isinstance(good_maps, (list, tuple)):
        parts = [np.asarray(good_map).ravel() for good_map in good_maps]
        values = np.concatenate(parts) if parts else np.empty(0)
    else:
        values = np.asarray(good_maps).ravel()
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return values[np.isfinite(values)]


def pixel_threshold_at_fpr(
    good_maps: ArrayLike | Sequence[ArrayLike],
    target_fpr: float,
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> float:
    """Pixel threshold with the ``threshold_at_fpr`` definition over all finite good-map pixels.

    NaN / inf pixels (not inspected) are ignored. ``good_maps`` may be one array or a list of maps
    of different sizes. Beyond ``max_samples`` finite pixels, a seeded uniform subsample (without
    replacement) bounds the work; the result is then an estimate of the exact quantile.
    """
    target_fpr = validate_fpr(target_fpr)
    if int(max_samples) != max_samples or max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
    values = _finite_pixels(good_maps)
    if values.size == 0:
        raise ValueError("good_maps contain no finite pixel: cannot calibrate a pixel threshold")
    if values.size > max_samples:
        rng = np.random.default_rng(seed)
        values = values[rng.choice(values.size, size=int(max_samples), replace=False)]
    return _threshold_from_values(values, target_fpr)


def _counts_above_candidates(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (descending) and the TP / FP counts of ``score > threshold`` at each.

    Candidates are every distinct score (the largest flags nothing) and one value just below the
    minimum (flags everything).
    """
    distinct_descending = np.unique(scores)[::-1]
    below_minimum = np.nextafter(distinct_descending[-1], -np.inf)
    thresholds = np.append(distinct_descending, below_minimum)
    positive_sorted = np.sort(scores[labels])
    negative_sorted = np.sort(scores[~labels])
    true_positives = positive_sorted.size - np.searchsorted(positive_sorted, thresholds, "right")
    false_positives = negative_sorted.size - np.searchsorted(negative_sorted, thresholds, "right")
    return thresholds, true_positives, false_positives


def f1_optimal_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(threshold, best F1) over all candidate thresholds, with defect iff score > threshold.

    The threshold is one of the scores, or the value just below the minimum (flag everything).
    Among equally good thresholds the highest is returned. Needs at least one defect label.
    """
    scores_array, labels_array = check_scores_and_labels(scores, labels)
    n_positive = int(labels_array.sum())
    if n_positive == 0:
        raise ValueError("f1_optimal_threshold needs at least one defect (label 1); got none")
    thresholds, true_positives, false_positives = _counts_above_candidates(
        scores_array, labels_array
    )
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P); the denominator is >= P > 0.
    f1_scores = 2.0 * true_positives / (true_positives + false_positives + n_positive)
    best = int(np.argmax(f1_scores))
    return float(thresholds[best]), float(f1_scores[best])


def roc_curve_points(scores: ArrayLike, labels: ArrayLike) -> dict[str, np.ndarray]:
    """ROC points ``{"fpr", "tpr", "threshold"}`` with the project convention score > threshold.

    Thresholds are descending: the first (the maximum score) gives (0, 0), the last (just below the
    minimum) gives (1, 1). Unlike sklearn's ``roc_curve`` (score >= threshold, first threshold inf),
    ``rates_at_threshold`` at any returned threshold reproduces the point exactly. A rate is NaN
    when its class is absent.
    """
    scores_array, labels_array = check_scores_and_labels(scores, labels)
    thresholds, true_positives, false_positives = _counts_above_candidates(
        scores_array, labels_array
    )
    n_positive = int(labels_array.sum())
    n_negative = labels_array.size - n_positive
    fpr = false_positives / n_negative if n_negative else np.full(thresholds.size, np.nan)
    tpr = true_positives / n_positive if n_positive else np.full(thresholds.size, np.nan)
    return {"fpr": fpr, "tpr": tpr, "threshold": thresholds}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def rates_at_threshold(scores: ArrayLike, labels: ArrayLike, threshold: float) -> dict[str, float]:
    """Confusion counts and rates for ``score > threshold``.

    Returns ``{"fpr", "tpr", "precision", "f1", "tp", "fp", "tn", "fn"}`` (counts as ints).
    Undefined ratios are ``float("nan")``: fpr without good samples, tpr without defects,
    precision when nothing is flagged, f1 when there are no defects and nothing is flagged.
    """
    scores_array, labels_array = check_scores_and_labels(scores, labels)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    flagged = scores_array > threshold
    tp = int(np.count_nonzero(flagged & labels_array))
    fp = int(np.count_nonzero(flagged & ~labels_array))
    fn = int(np.count_nonzero(~flagged & labels_array))
    tn = int(np.count_nonzero(~flagged & ~labels_array))
    return {
        "fpr": _ratio(fp, fp + tn),
        "tpr": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


@dataclass(frozen=True)
class ScoreScale:
    """Fixed affine map raw → normalised score, the same for every image of a model.

    Never per-image min-max: a clean image must keep a low normalised score.
    """

    offset: float
    scale: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.offset):
            raise ValueError(f"ScoreScale offset must be finite, got {self.offset!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"ScoreScale scale must be finite and > 0, got {self.scale!r}")

    def normalize(self, raw: _ScoreLike) -> _ScoreLike:
        """``(raw - offset) / scale`` for a float, numpy array or torch tensor (lists → arrays)."""
        if isinstance(raw, (list, tuple)):
            raw = np.asarray(raw, dtype=np.float64)
        return (raw - self.offset) / self.scale

    def denormalize(self, normalized: _ScoreLike) -> _ScoreLike:
        """Inverse of ``normalize``: ``normalized * scale + offset``."""
        if isinstance(normalized, (list, tuple)):
            normalized = np.asarray(normalized, dtype=np.float64)
        return normalized * self.scale + self.offset

    @classmethod
    def from_reference(cls, reference: float, threshold: float, at: float = 0.5) -> ScoreScale:
        """Scale mapping ``reference`` (e.g. median good score) to 0 and ``threshold`` to ``at``.

        Degenerate calibration (threshold <= reference) warns and falls back to a positive scale
        ``max(|threshold - reference|, |threshold|, 1e-12) / at`` with the offset chosen so that
        ``threshold`` still maps exactly to ``at``: "normalised > at" keeps meaning "raw >
        threshold" and the order of scores is kept, but ``reference`` no longer maps to 0.
        """
        reference, threshold, at = float(reference), float(threshold), float(at)
        for name, value in (("reference", reference), ("threshold", threshold), ("at", at)):
            if not math.isfinite(value):
                raise ValueError(
                    f"ScoreScale.from_reference: {name} must be finite, got {value!r}"
                )
        if at <= 0:
            raise ValueError(f"ScoreScale.from_reference: at must be > 0, got {at!r}")
        if threshold > reference:
            return cls(offset=reference, scale=(threshold - reference) / at)
        warnings.warn(
            f"degenerate score calibration: threshold {threshold!r} <= reference {reference!r}; "
            "using a fallback scale that keeps the threshold at the decision value",
            RuntimeWarning,
            stacklevel=2,
        )
        scale = max(abs(threshold - reference), abs(threshold), 1e-12) / at
        return cls(offset=threshold - at * scale, scale=scale)

    def to_dict(self) -> dict[str, float]:
        return {"offset": float(self.offset), "scale": float(self.scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreScale:
        """Inverse of ``to_dict``; raises ValueError naming missing keys."""
        missing = [key for key in ("offset", "scale") if key not in data]
        if missing:
            raise ValueError(f"ScoreScale.from_dict: missing keys {missing} in {data!r}")
        return cls(offset=float(data["offset"]), scale=float(data["scale"]))


QUANTILE_LEVELS = 1001  # pixel-score summaries saved with a model: enough for smooth pixel-level curves
_MAX_QUANTILE_SAMPLES = 2_000_000


def score_quantiles(values: np.ndarray, seed: int = 0) -> list[float]:
    """QUANTILE_LEVELS evenly spaced quantiles of finite values (a seeded subsample when there are many)."""
    values = np.asarray(values, dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    if values.size > _MAX_QUANTILE_SAMPLES:
        values = np.random.default_rng(seed).choice(values, _MAX_QUANTILE_SAMPLES, replace=False)
    return [float(q) for q in np.quantile(values, np.linspace(0.0, 1.0, QUANTILE_LEVELS))]


def rate_above(quantiles: Sequence[float], threshold: float | np.ndarray) -> float | np.ndarray:
    """Share of values above `threshold` (a float, or an array of them), read off a quantile summary.

    Linear between quantiles; NaN when the summary is empty.
    """
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if not quantiles.size:
        return float("nan") if np.ndim(threshold) == 0 else np.full(np.shape(threshold), np.nan)
    levels = np.linspace(0.0, 1.0, quantiles.size)
    rates = 1.0 - np.interp(threshold, quantiles, levels, left=0.0, right=1.0)
    return float(rates) if np.ndim(threshold) == 0 else rates


def threshold_at_rate(quantiles: Sequence[float], target_rate: float) -> float:
    """The threshold above which a share `target_rate` of the summarised values lies (inverse of rate_above)."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if not quantiles.size:
        raise ValueError("no score quantiles to set a threshold from")
    return float(np.interp(1.0 - target_rate, np.linspace(0.0, 1.0, quantiles.size), quantiles))


def threshold_at_false_regions(good_maps: np.ndarray, regions_per_image: float,
                               min_area: int = MIN_REGION_AREA, levels: int = 400) -> float:
    """The lowest pixel threshold at which good images show at most `regions_per_image` defect regions each, on
    average (regions: connected pixels above the threshold, at least `min_area` of them).

    What a person inspecting parts cares about on a good part is the number of false boxes, not the share of
    false pixels. The region count falls as the threshold rises (a region can split into two on the way, so
    the search checks its answer and steps up until the count holds).
    """
    maps = np.asarray(good_maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"good_maps must be a non-empty stack [N, H, W], got shape {maps.shape}")
    if not (math.isfinite(regions_per_image) and regions_per_image >= 0):
        raise ValueError(f"regions_per_image must be a number >= 0, got {regions_per_image!r}")
    allowed = math.floor(regions_per_image * maps.shape[0] + 1e-9)
    finite = maps[np.isfinite(maps)]
    if finite.size == 0:
        raise ValueError("good_maps contain no finite pixel: cannot calibrate a pixel threshold")
    # Candidates: the upper quantiles of the good pixels (where a threshold of a few regions lies) and every
    # image's maximum (the threshold at which that image's last region vanishes).
    quantiles = np.quantile(finite, np.linspace(0.9, 1.0, levels))
    maxima = np.nanmax(maps.reshape(maps.shape[0], -1), axis=1)
    candidates = np.unique(np.concatenate([quantiles, maxima]))
    low, high = 0, candidates.size - 1  # at the largest candidate (the global maximum) no region is left
    while low < high:
        middle = (low + high) // 2
        if count_regions(maps, float(candidates[middle]), min_area) <= allowed:
            high = middle
        else:
            low = middle + 1
    while low < candidates.size - 1 and count_regions(maps, float(candidates[low]), min_area) > allowed:
        low += 1
    return float(candidates[low])
