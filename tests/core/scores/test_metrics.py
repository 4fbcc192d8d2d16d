"""Tests for inspection.metrics: AUROC against sklearn, AUPRO against a naive reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from inspection.scores.metrics import aupro, image_auroc, pixel_auroc, pixel_metrics, pro_curve


def naive_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """Reference AUPRO: loop over every distinct threshold and every region (slow, obvious)."""
    regions = []  # (image index, boolean region mask)
    for image_index, mask in enumerate(masks):
        label_image, n_labels = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image_index, label_image == k) for k in range(1, n_labels + 1)]
    background_scores = maps[~masks]

    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(np.count_nonzero(background_scores >= threshold) / background_scores.size)
        overlaps = [np.mean(maps[i][region] >= threshold) for i, region in regions]
        pros.append(float(np.mean(overlaps)))

    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # clip the last segment at max_fpr by linear interpolation
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def make_masks() -> np.ndarray:
    """6 masks 24x24 with regions of many sizes, an 8-connected diagonal pair and empty masks."""
    masks = np.zeros((6, 24, 24), dtype=bool)
    # image 0: good (all False)
    masks[1, 5, 7] = True  # single-pixel region
    masks[1, 12:20, 3:21] = True  # large region in the same image
    masks[2, 2:4, 2:4] = True  # 4-pixel region
    masks[2, 15:18, 10:12] = True  # 6-pixel region: two regions in one image
    masks[3, 8, 8] = masks[3, 9, 9] = True  # diagonal pair: ONE region with 8-connectivity
    masks[3, 20, 1:4] = True
    # image 4: defect image with an empty mask (contributes only negatives)
    masks[5, 0:10, 14:24] = True  # region touching the border
    return masks


def make_maps(masks: np.ndarray, seed: int, decimals: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 1.5, 1.5))
    maps = noise / noise.std() + 1.5 * masks * rng.uniform(0.3, 1.5, size=masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)  # many ties
    return maps


def test_diagonal_pair_is_one_region():
    masks = make_masks()
    _, n_regions = ndimage.label(masks[3], structure=np.ones((3, 3)))
    assert n_regions == 2  # the diagonal pair and the 3-pixel line

    # Flag only one pixel of the diagonal pair: as one region its overlap is 1/2, so with the
    # line region at 0 PRO is 1/4; as two separate regions it would be 1/3.
    maps = np.zeros((1, 24, 24))
    maps[0, 8, 8] = 1.0
    fpr, pro = pro_curve(maps, masks[3:4])
    assert fpr[1] == 0.0 and pro[1] == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_image_auroc_matches_sklearn(decimals):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    scores = rng.normal(size=200) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("decimals", [None, 1])
def test_pixel_auroc_matches_sklearn(decimals):
    masks = make_masks()
    maps = make_maps(masks, seed=2, decimals=decimals)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-9)
    assert pixel_metrics(maps, masks)["pixel_auroc"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_naive_reference(decimals, max_fpr):
    masks = make_masks()
    maps = make_maps(masks, seed=3, decimals=decimals)
    expected = naive_aupro(maps, masks, max_fpr)
    assert 0.0 < expected < 1.0
    assert aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)
    assert pixel_metrics(maps, masks, max_fpr=max_fpr)["aupro"] == pytest.approx(expected, abs=1e-9)


def test_aupro_depends_on_max_fpr():
    masks = make_masks()
    maps = make_maps(masks, seed=4, decimals=None)
    assert aupro(maps, masks, max_fpr=0.01) != pytest.approx(aupro(maps, masks, max_fpr=0.3))


def test_pro_curve_shape_and_ends():
    masks = make_masks()
    maps = make_maps(masks, seed=5, decimals=1)
    fpr, pro = pro_curve(maps, masks)
    assert fpr.shape == pro.shape == (np.unique(maps).size + 1,)
    assert fpr[0] == 0.0 and pro[0] == 0.0
    assert fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15)


def test_perfect_and_inverted_maps():
    masks = make_masks()
    perfect = masks.astype(float)  # every defect pixel 1, every normal pixel 0
    # PRO reaches 1 at threshold 1 while FPR is still 0 -> the whole area up to max_fpr is 1.
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert pixel_auroc(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    # Inverted: all normal pixels come first, PRO stays 0 until FPR = 1.
    assert aupro(-perfect, masks) == pytest.approx(0.0, abs=1e-12)
    assert aupro(-perfect, masks, max_fpr=1.0) == pytest.approx(0.0, abs=1e-12)
    assert pixel_auroc(-perfect, masks) == pytest.approx(0.0, abs=1e-12)


def test_hand_worked_single_region():
    # Image 0 (good): negatives 0.1 0.2 0.3 0.4. Image 1: region {0.9, 0.25}, negatives 0.35 0.05.
    # Descending: 0.9(+) 0.4 0.35 0.3 0.25(+) 0.2 0.1 0.05, n_negative = 6, one region of 2 pixels.
    # PRO curve: (0,0) (0,.5) (1/6,.5) (2/6,.5) (3/6,.5) (3/6,1) (4/6,1) (5/6,1) (1,1).
    # Up to 0.3: PRO = 0.5 everywhere -> area 0.15 -> AUPRO 0.5.
    # Up to 1: 0.5 * 0.5 + 0.5 * 1 = 0.75; the single region makes pixel AUROC equal 0.75 too.
    maps = np.array([[[0.1, 0.2, 0.3, 0.4]], [[0.9, 0.25, 0.35, 0.05]]])
    masks = np.array([[[0, 0, 0, 0]], [[1, 1, 0, 0]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)
    assert aupro(maps, masks, max_fpr=1.0) == pytest.approx(0.75, abs=1e-12)
    assert pixel_auroc(maps, masks) == pytest.approx(0.75, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 6, 2 / 6, 3 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1])


def test_hand_worked_two_regions_differ_from_tpr():
    # One 1x6 image, mask [A A A . B .]: region A (3 px) scores .9 .8 .1, region B (1 px) .3,
    # negatives .5 and .2. Descending: .9(A) .8(A) .5(-) .3(B) .2(-) .1(A).
    # PRO = mean(overlap A, overlap B): 1/6, 1/3 at FPR 0; 1/3 at FPR .5; 5/6 at FPR .5; then 1.
    # AUPRO(max_fpr=1) = .5 * 1/3 + .5 * 5/6 = 7/12; AUPRO(0.3) = 1/3.
    # Pixel AUROC = pairs (pos > neg) / 8 = (2 + 2 + 1 + 0) / 8 = 5/8.
    maps = np.array([[[0.9, 0.8, 0.1, 0.5, 0.3, 0.2]]])
    masks = np.array([[[1, 1, 1, 0, 1, 0]]], dtype=bool)
    assert aupro(maps, masks, max_fpr=1.0) == pytest.approx(7 / 12, abs=1e-12)
    assert aupro(maps, masks, max_fpr=0.3) == pytest.approx(1 / 3, abs=1e-12)
    assert pixel_auroc(maps, masks) == pytest.approx(5 / 8, abs=1e-12)
    # Interpolation inside a sloped segment: up to FPR 0.75 the curve is 1/3 on [0, .5] and 5/6
    # on [.5, .75] -> (1/6 + 5/24) / 0.75 = 0.5.
    assert aupro(maps, masks, max_fpr=0.75) == pytest.approx(0.5, abs=1e-12)


def test_empty_mask_defect_image_adds_only_negatives():
    masks = make_masks()
    maps = make_maps(masks, seed=6, decimals=None)
    result = pixel_metrics(maps, masks)
    assert all(math.isfinite(value) for value in result.values())
    # Dropping the empty-mask image removes negatives only; the metric changes but stays finite.
    without = pixel_metrics(np.delete(maps, 4, axis=0), np.delete(masks, 4, axis=0))
    assert all(math.isfinite(value) for value in without.values())


def test_undefined_cases_return_nan():
    maps = np.random.default_rng(7).normal(size=(2, 5, 5))
    no_positive = np.zeros((2, 5, 5), dtype=bool)
    no_negative = np.ones((2, 5, 5), dtype=bool)
    for masks in (no_positive, no_negative):
        assert math.isnan(pixel_auroc(maps, masks))
        assert math.isnan(aupro(maps, masks))
        assert all(math.isnan(value) for value in pixel_metrics(maps, masks).values())
        with pytest.raises(ValueError, match="undefined"):
            pro_curve(maps, masks)
    assert math.isnan(image_auroc([0.1, 0.5, 0.3], [1, 1, 1]))
    assert math.isnan(image_auroc([0.1, 0.5, 0.3], [0, 0, 0]))


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], max_fpr=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(ValueError, match=r"labels must be 0 \(good\) or 1"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="same length"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])


def test_single_2d_map_is_accepted():
    maps = np.array([[0.9, 0.8, 0.1, 0.5, 0.3, 0.2]])
    masks = np.array([[1, 1, 1, 0, 1, 0]], dtype=bool)
    assert aupro(maps, masks, max_fpr=1.0) == pytest.approx(7 / 12, abs=1e-12)


def test_region_metrics_follow_their_definitions():
    from inspection.scores.metrics import compare_masks, region_metrics

    maps, masks = np.zeros((3, 20, 20)), np.zeros((3, 20, 20), bool)
    masks[0, 2:6, 2:6] = masks[0, 12:16, 12:16] = True  # a defect image with two true regions
    maps[0, 2:6, 2:6] = 1.0  # one found
    maps[0, 12:14, 12:20] = 1.0  # the other covered by 8 of 16 pixels: found too (at least half)
    maps[1, 0:5, 0:5] = 1.0  # a false box on a good image
    maps[2, 10:12, 10:12] = 1.0  # 4 pixels: below the 16-pixel minimum, not a region
    result = region_metrics(maps, masks, 0.5, min_area=16)
    assert result["region_recall"] == 1.0 and result["false_boxes_per_good_image"] == 0.5
    assert result["false_boxes_per_defect_image"] == 0.0
    assert result["mask_iou"] == pytest.approx(24 / 40)  # 16 + 8 in both, 16 + 16 + 8 in either
    maps[0, 12:14, 12:20] = 0.0
    maps[0, 12:13, 12:19] = 1.0  # 7 pixels: too small a region, the second true region is missed
    assert region_metrics(maps, masks, 0.5, min_area=16)["region_recall"] == 0.5
    single = compare_masks(maps[0] > 0.5, masks[0])
    assert [region["found"] for region in single["truth_regions"]] == [True, False]
    assert single["false_regions"] == 0 and single["iou"] == pytest.approx(20 / 35)  # the sliver overlaps 4 px


def test_metrics_by_type_measure_each_type_against_the_good_images_alone():
    from types import SimpleNamespace

    from inspection.workflows.evaluate import metrics_by_type

    rng = np.random.default_rng(0)
    types = ["good"] * 6 + ["scratch"] * 4 + ["stain"] * 4
    samples = [SimpleNamespace(defect_type=kind) for kind in types]
    labels = np.array([kind != "good" for kind in types], int)
    masks = np.zeros((len(types), 8, 8), bool)
    masks[6:, 2:4, 2:4] = True
    maps = rng.random(masks.shape).astype(np.float32)
    maps[6:10][masks[6:10]] += 5.0  # scratches stand out; stains look like the good surface
    scores = maps.reshape(len(types), -1).max(axis=1)
    result = metrics_by_type(samples, labels, scores, list(range(len(types))), maps, masks, np.ones_like(masks))
    assert set(result) == {"scratch", "stain"} and result["scratch"]["n_images"] == 4
    assert result["scratch"]["image_auroc"] == 1.0 and result["scratch"]["pixel_auroc"] == 1.0
    good_and_stain = list(range(6)) + list(range(10, 14))
    expected = roc_auc_score(masks[good_and_stain].ravel(), maps[good_and_stain].ravel())
    assert result["stain"]["pixel_auroc"] == pytest.approx(expected)
    assert result["stain"]["pixel_auroc"] < 0.8
    single = metrics_by_type(samples[:10], labels[:10], scores[:10], list(range(10)), maps[:10], masks[:10],
                             np.ones_like(masks[:10]))
    assert single == {}  # one type: the overall metrics say it all
