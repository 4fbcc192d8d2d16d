"""Tests for inspection.threshold (convention: defect iff score > threshold)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from inspection.scores.thresholds import (
    ScoreScale,
    conformal_threshold,
    f1_optimal_threshold,
    holdout_for_target,
    pixel_threshold_at_fpr,
    rates_at_threshold,
    roc_curve_points,
    threshold_at_fpr,
    validate_fpr,
)

TARGETS = [0.001, 0.01, 0.05, 0.1, 0.29, 0.5, 0.9, 0.999]


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1, 0.2, 0.29])
def test_holdout_for_target_is_the_fewest_whose_threshold_is_not_the_highest(target):
    needed = holdout_for_target(target)
    assert conformal_threshold(np.arange(needed), target).rank < needed
    assert conformal_threshold(np.arange(needed - 1), target).rank == needed - 1  # one fewer: the highest decides
    assert holdout_for_target(0.05) == 39


def test_threshold_at_fpr_hand_cases():
    scores = np.arange(1.0, 21.0)  # 20 distinct good scores 1..20
    np.random.default_rng(0).shuffle(scores)
    # k = floor(0.05 * 20) = 1 -> t = 2nd largest = 19: exactly one score (20) is above.
    assert threshold_at_fpr(scores, 0.05) == 19.0
    # k = floor(0.0001 * 20) = 0 -> t = max: nothing above.
    assert threshold_at_fpr(scores, 0.0001) == 20.0
    # k = floor(0.5 * 20) = 10 -> t = 11th largest = 10: ten scores above.
    assert threshold_at_fpr(scores, 0.5) == 10.0
    # Ties: k = 1 -> t = 2nd largest = 5, and no score is strictly above it (FPR 0 < 0.1).
    assert threshold_at_fpr([5, 5, 5, 1, 1, 1, 1, 1, 1, 1], 0.1) == 5.0


def test_threshold_at_fpr_never_exceeds_target_and_is_smallest():
    rng = np.random.default_rng(1)
    for trial in range(300):
        size = int(rng.integers(1, 200))
        scores = rng.normal(size=size)
        if trial % 2:
            scores = np.round(scores, 1)  # many ties
        for target in TARGETS:
            threshold = threshold_at_fpr(scores, target)
            assert threshold in scores
            assert np.count_nonzero(scores > threshold) / size <= target
            # Smallest such score: the next lower score would flag every score >= threshold.
            assert np.count_nonzero(scores >= threshold) / size > target


def test_threshold_at_fpr_float_rounding_of_target_times_n():
    # 0.29 * 100 = 28.999999999999996 in floats; 29 of 100 above is still allowed.
    scores = np.arange(100.0)
    threshold = threshold_at_fpr(scores, 0.29)
    assert np.count_nonzero(scores > threshold) == 29


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "abc"])
def test_invalid_fpr_raises(bad):
    with pytest.raises(ValueError, match="target FPR must be between 0 and 1"):
        validate_fpr(bad)
    with pytest.raises(ValueError, match="target FPR must be between 0 and 1"):
        threshold_at_fpr([0.1, 0.2], bad)
    with pytest.raises(ValueError, match="target FPR must be between 0 and 1"):
        pixel_threshold_at_fpr(np.zeros((2, 3, 3)), bad)


def test_validate_fpr_returns_float():
    assert validate_fpr(0.05) == 0.05


def test_threshold_at_fpr_bad_scores():
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        threshold_at_fpr([0.1, float("nan")], 0.1)


def test_pixel_threshold_exact_on_small_input():
    rng = np.random.default_rng(2)
    maps = rng.random((4, 10, 10))
    descending = np.sort(maps.ravel())[::-1]
    # 400 pixels, target 0.05 -> k = 20 -> the 21st largest pixel.
    assert pixel_threshold_at_fpr(maps, 0.05) == descending[20]
    assert pixel_threshold_at_fpr(maps, 0.05) == threshold_at_fpr(maps.ravel(), 0.05)


def test_pixel_threshold_ignores_nan_and_accepts_maps_of_different_sizes():
    rng = np.random.default_rng(3)
    maps = [rng.random((10, 10)), rng.random((7, 13))]
    maps_with_nan = [good_map.copy() for good_map in maps]
    maps_with_nan[0][:3] = np.nan  # not inspected: border rows
    maps_with_nan[1][:, -2:] = np.nan
    finite = np.concatenate([m[np.isfinite(m)] for m in maps_with_nan])
    expected = threshold_at_fpr(finite, 0.1)
    assert pixel_threshold_at_fpr(maps_with_nan, 0.1) == expected
    assert np.count_nonzero(finite > expected) / finite.size <= 0.1
    with pytest.raises(ValueError, match="no finite pixel"):
        pixel_threshold_at_fpr(np.full((2, 3, 3), np.nan), 0.1)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_pixel_threshold_with_subsampling_is_close(target):
    rng = np.random.default_rng(4)
    maps = rng.gamma(2.0, size=(10, 100, 100))  # 100k pixels, skewed like anomaly scores
    threshold = pixel_threshold_at_fpr(maps, target, max_samples=20_000, seed=0)
    achieved_fpr = np.count_nonzero(maps > threshold) / maps.size
    assert abs(achieved_fpr - target) < 0.005
    # Seeded: the same call gives the same answer.
    assert pixel_threshold_at_fpr(maps, target, max_samples=20_000, seed=0) == threshold


def test_pixel_threshold_bad_max_samples():
    with pytest.raises(ValueError, match="max_samples"):
        pixel_threshold_at_fpr(np.zeros((2, 2)), 0.1, max_samples=0)


def test_f1_optimal_threshold_hand_case():
    scores = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2]
    labels = [0, 0, 1, 1, 1, 0]
    # F1 = 2TP / (TP + FP + P) with P = 3, flagging score > t:
    # t=.8: 0 | t=.7: 2/4 | t=.4: 4/5 | t=.35: 4/6 | t=.2: 6/7 | t=.1: 6/8 | below min: 6/9.
    threshold, best_f1 = f1_optimal_threshold(scores, labels)
    assert threshold == 0.2
    assert best_f1 == pytest.approx(6 / 7)
    assert rates_at_threshold(scores, labels, threshold)["f1"] == pytest.approx(6 / 7)


def test_f1_optimal_threshold_matches_brute_force():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=60)
    scores = np.round(rng.normal(size=60) + labels, 1)
    threshold, best_f1 = f1_optimal_threshold(scores, labels)
    candidates = np.append(np.unique(scores), scores.min() - 1.0)
    brute_best = max(f1_score(labels, scores > t) for t in candidates)
    assert best_f1 == pytest.approx(brute_best, abs=1e-12)
    assert f1_score(labels, scores > threshold) == pytest.approx(best_f1, abs=1e-12)


def test_f1_optimal_threshold_flag_everything_is_possible():
    # All defects: flagging everything (threshold just below the minimum) gives F1 = 1.
    threshold, best_f1 = f1_optimal_threshold([0.3, 0.1, 0.2], [1, 1, 1])
    assert best_f1 == 1.0 and threshold < 0.1
    with pytest.raises(ValueError, match="at least one defect"):
        f1_optimal_threshold([0.3, 0.1], [0, 0])


def test_rates_at_threshold_counts():
    scores = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2]
    labels = [0, 0, 1, 1, 1, 0]
    # score > 0.35 flags 0.4 (good), 0.8, 0.7 (defects); 0.35 itself is not flagged.
    rates = rates_at_threshold(scores, labels, 0.35)
    assert (rates["tp"], rates["fp"], rates["tn"], rates["fn"]) == (2, 1, 2, 1)
    assert rates["fpr"] == pytest.approx(1 / 3)
    assert rates["tpr"] == pytest.approx(2 / 3)
    assert rates["precision"] == pytest.approx(2 / 3)
    assert rates["f1"] == pytest.approx(2 / 3)
    nothing_flagged = rates_at_threshold(scores, labels, 0.8)
    assert nothing_flagged["tp"] == nothing_flagged["fp"] == 0
    assert math.isnan(nothing_flagged["precision"])
    assert nothing_flagged["f1"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        rates_at_threshold([0.1, 0.2], [0], 0.1)
    with pytest.raises(ValueError, match="labels must be 0"):
        rates_at_threshold([0.1, 0.2], [0, 3], 0.1)


def test_roc_curve_points_consistent_with_rates_and_sklearn():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, size=80)
    scores = np.round(rng.normal(size=80) + labels, 1)
    curve = roc_curve_points(scores, labels)
    assert set(curve) == {"fpr", "tpr", "threshold"}
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve["threshold"]) < 0)
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )
    for index in (0, 5, len(curve["threshold"]) // 2, -1):
        rates = rates_at_threshold(scores, labels, curve["threshold"][index])
        assert rates["fpr"] == curve["fpr"][index]
        assert rates["tpr"] == curve["tpr"][index]


def test_score_scale_reference_and_threshold():
    scale = ScoreScale.from_reference(reference=2.0, threshold=6.0)
    assert scale.normalize(2.0) == pytest.approx(0.0)
    assert scale.normalize(6.0) == pytest.approx(0.5)
    assert ScoreScale.from_reference(2.0, 6.0, at=1.0).normalize(6.0) == pytest.approx(1.0)
    raw = np.array([[0.0, 2.0], [6.0, 10.0]])
    np.testing.assert_allclose(scale.normalize(raw), [[-0.25, 0.0], [0.5, 1.0]])
    np.testing.assert_allclose(scale.denormalize(scale.normalize(raw)), raw)
    assert scale.denormalize(scale.normalize(3.7)) == pytest.approx(3.7)


def test_score_scale_round_trip_dict_and_torch():
    scale = ScoreScale(offset=1.5, scale=0.25)
    assert ScoreScale.from_dict(scale.to_dict()) == scale
    with pytest.raises(ValueError, match="missing keys"):
        ScoreScale.from_dict({"offset": 1.0})
    torch = pytest.importorskip("torch")
    tensor = torch.tensor([1.5, 2.0])
    assert torch.allclose(scale.normalize(tensor), torch.tensor([0.0, 2.0]))


def test_score_scale_degenerate_calibration_keeps_order_and_decision():
    with pytest.warns(RuntimeWarning, match="degenerate"):
        scale = ScoreScale.from_reference(reference=5.0, threshold=3.0)
    assert scale.scale > 0
    assert scale.normalize(3.0) == pytest.approx(0.5)  # decision value kept
    assert scale.normalize(4.0) > scale.normalize(3.0)
    with pytest.warns(RuntimeWarning):
        equal = ScoreScale.from_reference(reference=0.0, threshold=0.0)
    assert equal.scale > 0 and equal.normalize(0.0) == pytest.approx(0.5)


def test_score_scale_rejects_bad_values():
    with pytest.raises(ValueError, match="scale"):
        ScoreScale(offset=0.0, scale=0.0)
    with pytest.raises(ValueError, match="threshold"):
        ScoreScale.from_reference(0.0, float("inf"))


def test_rate_above_reads_quantiles_for_one_or_many_thresholds_and_inverts():
    from inspection.scores.thresholds import rate_above, score_quantiles, threshold_at_rate

    values = np.random.default_rng(0).normal(size=50_000)
    quantiles = score_quantiles(values)
    assert rate_above(quantiles, 0.0) == pytest.approx(np.mean(values > 0.0), abs=2e-3)
    many = rate_above(quantiles, np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(many, [np.mean(values > t) for t in (-1.0, 0.0, 1.0)], atol=2e-3)
    threshold = threshold_at_rate(quantiles, 0.05)
    assert np.mean(values > threshold) == pytest.approx(0.05, abs=2e-3)
    assert math.isnan(rate_above([], 0.0)) and np.isnan(rate_above([], np.zeros(2))).all()
    with pytest.raises(ValueError):
        threshold_at_rate([], 0.05)


def test_threshold_at_false_regions_counts_regions_not_pixels():
    from inspection.scores.regions import count_regions
    from inspection.scores.thresholds import threshold_at_false_regions

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(20, 64, 64)).astype(np.float32) * 0.1
    for index in range(5):  # five good images with one bright blob each, of rising height
        maps[index, 10:20, 10:20] += 1.0 + index
    threshold = threshold_at_false_regions(maps, regions_per_image=0.1, min_area=16)  # 2 regions allowed
    assert count_regions(maps, threshold, 16) <= 2 < count_regions(maps, 2.8, 16)  # 2.8: under the third blob
    assert 2.8 < threshold < 3.3  # the third-highest blob (3 ± noise) is where its region shrinks below 16 px
    assert count_regions(maps, threshold_at_false_regions(maps, 0.0, 16), 16) == 0
    with pytest.raises(ValueError, match="regions_per_image"):
        threshold_at_false_regions(maps, -1)


def test_new_thresholds_move_the_scale_so_they_show_at_one_half():
    from inspection.model.calibration import Calibration

    scores = np.linspace(1.0, 2.0, 21)
    maps = np.random.default_rng(1).random((21, 32, 32)).astype(np.float32)
    calibration = Calibration.from_good(scores, maps, 0.05, 0.05)
    assert calibration.normalized_image_threshold == pytest.approx(0.5)
    moved = calibration.with_thresholds(image_threshold=3.0, pixel_threshold=0.9)
    assert moved.normalized_image_threshold == pytest.approx(0.5)
    assert moved.normalized_pixel_threshold == pytest.approx(0.5)
    assert float(moved.image_scale.normalize(1.0)) == pytest.approx(0.0)  # the calm reference stays at 0
    assert Calibration.from_dict(moved.to_dict()) == moved
