"""Evaluation metrics for anomaly detection: image AUROC, pixel AUROC and AUPRO.

Conventions
-----------
* ``maps``: float array ``[N, H, W]`` (a single ``[H, W]`` map is also accepted), higher = more
  anomalous. NaN is not allowed here (a ValueError is raised).
* ``masks``: boolean ground truth of the same shape; all-False for good images. A defect image with
  an all-False mask simply contributes no region and only negative pixels.
* ``valid`` (optional, same shape): the pixels that belong to an image; the others (padding that lets images
  of different sizes share one array) count nowhere. A pixel of an image that the model never saw scores -inf:
  it counts, as missed at every threshold.
* A pixel counts as "flagged at threshold t" when its score is ``>= t``; every distinct score is a
  threshold, so ties are handled exactly like ``sklearn.metrics.roc_auc_score``.

Undefined values: when there is no positive pixel (no defect region) or no negative pixel,
``pixel_auroc``, ``aupro`` and ``pixel_metrics`` return ``float("nan")`` instead of raising;
``image_auroc`` returns NaN when only one class is present. ``pro_curve`` raises ValueError in those
cases because there is no curve to return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .regions import MIN_REGION_AREA, label_stack, region_masks

__all__ = ["image_auroc", "pixel_auroc", "pro_curve", "aupro", "pixel_metrics", "region_metrics", "compare_masks",
           "stack_ragged"]



@dataclass(frozen=True)
class _ThresholdCurves:
    """Rates at every distinct threshold (descending), each prefixed with the (0, 0) start point."""

    fpr: np.ndarray
    tpr: np.ndarray
    pro: np.ndarray  # empty when not requested
    n_positive: int
    n_negative: int


def _tie_group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal values in a sorted 1-D array."""
    changes = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    return np.append(changes, sorted_scores.size - 1)


def _validate_max_fpr(max_fpr: float) -> float:
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:  # also rejects NaN
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    return max_fpr


def _as_maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes/values and return (float maps [N, H, W], bool masks [N, H, W])."""
    maps_array = np.asarray(maps)
    masks_array = np.asarray(masks)
    if maps_array.shape != masks_array.shape:
        raise ValueError(
            f"maps and masks must have the same shape, got maps {maps_array.shape} "
            f"and masks {masks_array.shape}"
        )
    if maps_array.ndim == 2:
        maps_array, masks_array = maps_array[None], masks_array[None]
    if maps_array.ndim != 3:
        raise ValueError(f"maps must have shape [N, H, W] or [H, W], got {maps_array.shape}")
    if maps_array.size == 0:
        raise ValueError(f"maps are empty (shape {maps_array.shape})")
    if not np.issubdtype(maps_array.dtype, np.floating):
        maps_array = maps_array.astype(np.float64)
    if np.isnan(maps_array).any():
        raise ValueError(f"maps contain {int(np.isnan(maps_array).sum())} NaN values")
    return maps_array, masks_array.astype(bool, copy=False)


def _pixel_curves(maps: np.ndarray, masks: np.ndarray, with_pro: bool,
                  valid: np.ndarray | None = None) -> _ThresholdCurves:
    """FPR, TPR and (optionally) PRO at every distinct threshold, from a single descending sort.

    Each pixel carries a weight: 1 into the positive or negative count, and for region pixels
    1 / (region size * number of regions) into the PRO sum. Cumulative sums in descending score
    order, read at the last index of each tie group, give the exact rates at each threshold.
    Memory is O(number of pixels).
    """
    if with_pro:
        # Ground-truth regions: 8-connected within each image, as labelling each mask separately would give
        # (Bergmann et al., MVTec AD, IJCV 2021); every region counts, however small.
        region_labels, n_regions = label_stack(masks, min_area=1)
        region_labels = region_labels.ravel()
    else:
        region_labels, n_regions = masks.ravel(), 0

    scores = maps.ravel()
    if valid is not None:  # padding is dropped after labelling (it is never part of a region)
        inside = np.asarray(valid, bool).ravel()
        scores, region_labels = scores[inside], region_labels[inside]
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    group_ends = _tie_group_ends(sorted_scores)
    del sorted_scores

    sorted_labels = region_labels[order]
    del order
    positive_counts = np.cumsum(sorted_labels > 0, dtype=np.int64)[group_ends]
    negative_counts = (group_ends + 1) - positive_counts
    n_positive = int(positive_counts[-1])
    n_negative = int(negative_counts[-1])

    start = np.zeros(1)
    # Division by zero is avoided here; callers report NaN when a class is missing.
    fpr = np.concatenate([start, negative_counts / max(n_negative, 1)])
    tpr = np.concatenate([start, positive_counts / max(n_positive, 1)])

    pro = np.empty(0)
    if with_pro and n_regions > 0:
        region_sizes = np.bincount(region_labels, minlength=n_regions + 1)
        pixel_weight_of_label = np.zeros(n_regions + 1, dtype=np.float64)
        pixel_weight_of_label[1:] = 1.0 / (region_sizes[1:].astype(np.float64) * n_regions)
        pixel_weights = pixel_weight_of_label[sorted_labels]
        np.cumsum(pixel_weights, out=pixel_weights)  # in place: one float64 buffer, not two
        pro_sums = pixel_weights[group_ends]
        pro = np.concatenate([start, pro_sums])
    return _ThresholdCurves(fpr, tpr, pro, n_positive, n_negative)


def _area_up_to(x: np.ndarray, y: np.ndarray, max_x: float) -> float:
    """Trapezoid area under y(x) from x[0] to max_x, interpolating y linearly at max_x.

    ``x`` must be non-decreasing with ``x[0] <= max_x``.
    """
    cut = int(np.searchsorted(x, max_x, side="right"))  # x[:cut] <= max_x < x[cut]
    if cut < x.size:
        x_left, x_right = x[cut - 1], x[cut]
        y_left, y_right = y[cut - 1], y[cut]
        y_at_max = y_left + (y_right - y_left) * (max_x - x_left) / (x_right - x_left)
        x = np.append(x[:cut], max_x)
        y = np.append(y[:cut], y_at_max)
    return float(np.trapezoid(y, x))


def _auroc_from_curves(curves: _ThresholdCurves) -> float:
    if curves.n_positive == 0 or curves.n_negative == 0:
        return float("nan")
    return float(np.trapezoid(curves.tpr, curves.fpr))


def _aupro_from_curves(curves: _ThresholdCurves, max_fpr: float) -> float:
    if curves.pro.size == 0 or curves.n_negative == 0:
        return float("nan")
    return _area_up_to(curves.fpr, curves.pro, max_fpr) / max_fpr


def check_scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate 1-D scores and 0/1 labels of equal length; return (float64 scores, bool labels)."""
    scores_array = np.asarray(scores, dtype=np.float64).ravel()
    labels_array = np.asarray(labels).ravel()
    if scores_array.size != labels_array.size:
        raise ValueError(
            f"scores and labels must have the same length, got {scores_array.size} "
            f"and {labels_array.size}"
        )
    if scores_array.size == 0:
        raise ValueError("scores are empty")
    if np.isnan(scores_array).any():
        raise ValueError(f"scores contain {int(np.isnan(scores_array).sum())} NaN values")
    bad_labels = np.setdiff1d(np.unique(labels_array), [0, 1])
    if bad_labels.size:
        raise ValueError(f"labels must be 0 (good) or 1 (defect), got values {bad_labels.tolist()}")
    return scores_array, labels_array.astype(bool)


def image_auroc(image_scores: ArrayLike, labels: ArrayLike) -> float:
    """Image-level ROC AUC (labels 0 = good, 1 = defect); equals sklearn's roc_auc_score.

    Returns NaN when only one class is present.
    """
    scores_array, labels_array = check_scores_and_labels(image_scores, labels)
    # Reuse the pixel machinery: one "image" of shape [1, n].
    curves = _pixel_curves(scores_array[None, None], labels_array[None, None], False)
    return _auroc_from_curves(curves)


def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float:
    """Pixel-level ROC AUC over all pixels of all images; NaN if a class is missing."""
    maps_array, masks_array = _as_maps_and_masks(maps, masks)
    return _auroc_from_curves(_pixel_curves(maps_array, masks_array, with_pro=False))


def pro_curve(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve ``(fpr, pro)``; fpr is non-decreasing from 0 to 1.

    One point per distinct score threshold plus the (0, 0) start. Raises ValueError when there is
    no defect region or no negative pixel (the curve is undefined).
    """
    maps_array, masks_array = _as_maps_and_masks(maps, masks)
    curves = _pixel_curves(maps_array, masks_array, with_pro=True)
    if curves.pro.size == 0:
        raise ValueError("PRO curve is undefined: the masks contain no defect pixel")
    if curves.n_negative == 0:
        raise ValueError("PRO curve is undefined: the masks contain no negative (good) pixel")
    return curves.fpr, curves.pro


def aupro(maps: ArrayLike, masks: ArrayLike, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve from FPR 0 to ``max_fpr``, divided by ``max_fpr`` (1.0 = perfect).

    NaN when there is no defect region or no negative pixel.
    """
    max_fpr = _validate_max_fpr(max_fpr)
    maps_array, masks_array = _as_maps_and_masks(maps, masks)
    return _aupro_from_curves(_pixel_curves(maps_array, masks_array, with_pro=True), max_fpr)


def pixel_metrics(maps: ArrayLike, masks: ArrayLike, max_fpr: float = 0.3,
                  valid: ArrayLike | None = None) -> dict[str, float]:
    """``{"pixel_auroc": ..., "aupro": ...}`` computed from one shared sort of the pixels (those in `valid`)."""
    max_fpr = _validate_max_fpr(max_fpr)
    maps_array, masks_array = _as_maps_and_masks(maps, masks)
    valid_array = None
    if valid is not None:
        valid_array = np.asarray(valid, bool).reshape(maps_array.shape)
        masks_array = masks_array & valid_array
    curves = _pixel_curves(maps_array, masks_array, with_pro=True, valid=valid_array)
    return {
        "pixel_auroc": _auroc_from_curves(curves),
        "aupro": _aupro_from_curves(curves, max_fpr),
    }


def stack_ragged(maps: list[np.ndarray], masks: list[np.ndarray], fill: float = -np.inf
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image maps and masks of different sizes as (maps, masks, valid) arrays [N, H, W] for the metrics.

    Portrait images are transposed (every metric here is unchanged by it: regions are 8-connected), so that a
    set of both orientations needs short side × long side per image, not long side squared. Pixels beyond an
    image are `fill` in the maps, False in the masks and in `valid`.
    """
    maps = [item.T if item.shape[0] > item.shape[1] else item for item in maps]
    masks = [item.T if item.shape[0] > item.shape[1] else item for item in masks]
    height, width = max(item.shape[0] for item in maps), max(item.shape[1] for item in maps)
    stacked = np.full((len(maps), height, width), fill, np.float32)
    stacked_masks = np.zeros(stacked.shape, bool)
    valid = np.zeros(stacked.shape, bool)
    for index, (item, mask) in enumerate(zip(maps, masks)):
        stacked[index, : item.shape[0], : item.shape[1]] = item
        stacked_masks[index, : mask.shape[0], : mask.shape[1]] = mask
        valid[index, : item.shape[0], : item.shape[1]] = True
    return stacked, stacked_masks, valid


def compare_masks(predicted: ArrayLike, truth: ArrayLike) -> dict[str, Any]:
    """One image's predicted defect mask against its ground truth: IoU, each true region found or missed (found:
    at least half of its pixels predicted), and how many predicted regions touch no true pixel."""
    predicted_mask, truth_mask = np.asarray(predicted, bool)[None], np.asarray(truth, bool)[None]
    if predicted_mask.shape != truth_mask.shape:
        raise ValueError(f"masks differ in shape: {predicted_mask.shape[1:]} and {truth_mask.shape[1:]}")
    truth_labels, n_truth = label_stack(truth_mask, min_area=1)
    sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:]
    covered = np.bincount(truth_labels[predicted_mask], minlength=n_truth + 1)[1:]
    predicted_labels, n_predicted = label_stack(predicted_mask, min_area=1)
    touching = np.bincount(predicted_labels[truth_mask], minlength=n_predicted + 1)[1:] > 0
    union = int((predicted_mask | truth_mask).sum())
    return {"iou": float((predicted_mask & truth_mask).sum() / union) if union else float("nan"),
            "truth_regions": [{"area": int(size), "covered": float(hit / size), "found": bool(hit >= 0.5 * size)}
                              for size, hit in zip(sizes, covered)],
            "false_regions": int((~touching).sum())}


def region_metrics(maps: ArrayLike, masks: ArrayLike, threshold: float,
                   min_area: int = MIN_REGION_AREA) -> dict[str, float]:
    """What an inspector sees at a pixel threshold: boxes found and false, and the mask's overlap.

    Predicted regions are the connected pixels above `threshold` (at least `min_area` of them) on every image,
    whatever its verdict. A ground-truth region is found when at least half of its pixels lie inside predicted
    regions; a predicted region is false when it touches no ground-truth pixel.

    - ``region_recall``: found ground-truth regions / all ground-truth regions;
    - ``false_boxes_per_good_image``: predicted regions on good images (all false) / good images;
    - ``false_boxes_per_defect_image``: false predicted regions on defect images / defect images;
    - ``mask_iou``: pixels in both the predicted and the true mask / pixels in either, over the defect images.
    """
    maps_array, masks_array = _as_maps_and_masks(maps, masks)
    predicted = region_masks(maps_array, threshold, min_area)
    truth_labels, n_truth = label_stack(masks_array, min_area=1)
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)[1:]
    covered = np.bincount(truth_labels[predicted], minlength=n_truth + 1)[1:]
    predicted_labels, n_predicted = label_stack(predicted, min_area=1)
    false_regions = np.bincount(predicted_labels[masks_array], minlength=n_predicted + 1)[1:] == 0
    # Each region lies in one image: the first axis of its bounding box says which.
    image_of_region = np.array([box[0].start for box in ndimage.find_objects(predicted_labels)], np.int64)
    is_defect_image = masks_array.reshape(len(masks_array), -1).any(axis=1)
    on_defect = is_defect_image[image_of_region] if n_predicted else np.zeros(0, bool)
    n_good, n_defect = int((~is_defect_image).sum()), int(is_defect_image.sum())
    union = (predicted | masks_array)[is_defect_image].sum()
    return {
        "region_recall": float(np.mean(covered >= 0.5 * truth_sizes)) if n_truth else float("nan"),
        "false_boxes_per_good_image": float((false_regions & ~on_defect).sum() / n_good) if n_good else float("nan"),
        "false_boxes_per_defect_image": float((false_regions & on_defect).sum() / n_defect) if n_defect
        else float("nan"),
        "mask_iou": float((predicted & masks_array)[is_defect_image].sum() / union) if union else float("nan"),
    }
