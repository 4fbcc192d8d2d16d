"""Tests for inspection.regions.find_regions / scale_regions."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.scores.regions import Region, find_regions, scale_regions


def two_blob_map() -> np.ndarray:
    anomaly_map = np.zeros((10, 12))
    # Blob A: rows 1-2, cols 2-4 (6 pixels), scores 0.6 except one 0.9 -> mean (5*0.6+0.9)/6 = 0.65
    anomaly_map[1:3, 2:5] = 0.6
    anomaly_map[2, 3] = 0.9
    # Blob B: L-shape rows 5-7, cols 7-9: column 7 (3 px) + row 7 cols 8-9 (2 px), 0.8 everywhere.
    anomaly_map[5:8, 7] = 0.8
    anomaly_map[7, 8:10] = 0.8
    anomaly_map[0, 11] = 0.4  # below the threshold
    return anomaly_map


def test_two_blobs_exact_boxes_and_stats():
    regions = find_regions(two_blob_map(), threshold=0.5)
    assert len(regions) == 2
    blob_a, blob_b = regions  # sorted by max_score: A (0.9) before B (0.8)
    assert (blob_a.x0, blob_a.y0, blob_a.x1, blob_a.y1) == (2, 1, 5, 3)
    assert blob_a.area == 6
    assert blob_a.max_score == pytest.approx(0.9)
    assert blob_a.mean_score == pytest.approx(0.65)
    assert (blob_b.x0, blob_b.y0, blob_b.x1, blob_b.y1) == (7, 5, 10, 8)
    assert blob_b.area == 5
    assert blob_b.max_score == pytest.approx(0.8)
    assert blob_b.mean_score == pytest.approx(0.8)
    assert (blob_b.width, blob_b.height) == (3, 3)


def test_threshold_is_strict():
    # A pixel equal to the threshold is not a defect (defect iff score > threshold).
    regions = find_regions(two_blob_map(), threshold=0.8)
    assert [(r.area, r.max_score) for r in regions] == [(1, 0.9)]


def test_diagonal_pair_joins_with_8_but_not_4_connectivity():
    anomaly_map = np.zeros((5, 5))
    anomaly_map[1, 1] = 1.0
    anomaly_map[2, 2] = 2.0
    joined = find_regions(anomaly_map, 0.5)
    assert len(joined) == 1
    assert joined[0] == Region(x0=1, y0=1, x1=3, y1=3, area=2, max_score=2.0, mean_score=1.5)
    separate = find_regions(anomaly_map, 0.5, connectivity=4)
    assert [(r.x0, r.y0, r.area) for r in separate] == [(2, 2, 1), (1, 1, 1)]


def test_min_area_filtering():
    regions = find_regions(two_blob_map(), threshold=0.5, min_area=6)
    assert [r.area for r in regions] == [6]
    assert find_regions(two_blob_map(), threshold=0.5, min_area=7) == []
    assert len(find_regions(two_blob_map(), threshold=0.5, min_area=5)) == 2


def test_nan_pixels_never_belong_to_a_region():
    anomaly_map = np.zeros((4, 6))
    anomaly_map[1, 1:5] = 1.0
    anomaly_map[1, 3] = np.nan  # not inspected: splits the run into two regions
    anomaly_map[3, :] = np.nan
    regions = find_regions(anomaly_map, 0.5)
    assert sorted((r.x0, r.x1, r.area) for r in regions) == [(1, 3, 2), (4, 5, 1)]
    assert all(np.isfinite([r.mean_score for r in regions]))
    assert find_regions(np.full((3, 3), np.nan), -1e9) == []


def test_empty_when_nothing_above_threshold():
    assert find_regions(two_blob_map(), threshold=0.95) == []
    assert find_regions(np.zeros((3, 3)), threshold=0.0) == []


def test_sorted_by_max_score_descending():
    anomaly_map = np.zeros((9, 9))
    peaks = {(0, 0): 0.3, (0, 4): 0.9, (4, 0): 0.5, (8, 8): 0.7, (4, 4): 0.1}
    for (row, col), value in peaks.items():
        anomaly_map[row, col] = value
    regions = find_regions(anomaly_map, 0.05)
    assert [r.max_score for r in regions] == [0.9, 0.7, 0.5, 0.3, 0.1]
    assert [(r.x0, r.y0) for r in regions] == [(4, 0), (8, 8), (0, 4), (0, 0), (4, 4)]


def test_to_dict_and_scale_regions():
    region = find_regions(two_blob_map(), 0.5)[0]
    assert region.to_dict() == {
        "x0": 2, "y0": 1, "x1": 5, "y1": 3, "area": 6,
        "max_score": region.max_score, "mean_score": region.mean_score,
    }
    scaled = scale_regions([region], sx=2.0, sy=0.5)[0]
    assert (scaled.x0, scaled.y0, scaled.x1, scaled.y1) == (4, 0, 10, 2)
    assert scaled.area == 6 and scaled.max_score == region.max_score
    with pytest.raises(ValueError, match="sx"):
        scale_regions([region], sx=0.0, sy=1.0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 3\)"):
        find_regions(np.zeros((2, 3, 3)), 0.5)
    with pytest.raises(ValueError, match="connectivity"):
        find_regions(np.zeros((3, 3)), 0.5, connectivity=6)
    with pytest.raises(ValueError, match="min_area"):
        find_regions(np.zeros((3, 3)), 0.5, min_area=0)
    with pytest.raises(ValueError, match="threshold is NaN"):
        find_regions(np.zeros((3, 3)), float("nan"))
