"""Connected defect regions of a thresholded anomaly map (defect iff score > threshold)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["Region", "find_regions", "scale_regions", "MIN_REGION_AREA", "label_stack", "region_masks", "count_regions"]

_STRUCTURES = {
    4: ndimage.generate_binary_structure(2, 1),
    8: ndimage.generate_binary_structure(2, 2),
}


@dataclass(frozen=True)
class Region:
    """One connected defect region; box ``[x0, x1) x [y0, y1)`` in the map's pixel coordinates."""

    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    area: int  # pixels in the component
    max_score: float
    mean_score: float

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_dict(self) -> dict:
        return asdict(self)


def find_regions(
    anomaly_map: ArrayLike, threshold: float, min_area: int = 1, connectivity: int = 8
) -> list[Region]:
    """Connected components of ``anomaly_map > threshold``, sorted by max_score descending.

    NaN pixels (not inspected) never belong to a region. Components with fewer than ``min_area``
    pixels are dropped. Ties in max_score are broken by larger area, then top-left position.
    """
    scores = np.asarray(anomaly_map)
    if scores.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D [H, W], got shape {scores.shape}")
    is_real_number = np.issubdtype(scores.dtype, np.number) and not np.issubdtype(
        scores.dtype, np.complexfloating
    )
    if not is_real_number:
        raise ValueError(f"anomaly_map must be real-valued, got dtype {scores.dtype}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be a positive integer, got {min_area!r}")

    # NaN > threshold is False, so not-inspected pixels are excluded here without a special case.
    above = np.greater(scores, threshold, where=~np.isnan(scores), out=np.zeros(scores.shape, bool))
    component_labels, n_components = ndimage.label(above, structure=_STRUCTURES[connectivity])
    if n_components == 0:
        return []

    areas = np.bincount(component_labels.ravel(), minlength=n_components + 1)[1:]
    kept_labels = np.flatnonzero(areas >= min_area) + 1
    if kept_labels.size == 0:
        return []
    max_scores = np.asarray(ndimage.maximum(scores, component_labels, index=kept_labels), float)
    mean_scores = np.asarray(ndimage.mean(scores, component_labels, index=kept_labels), float)
    boxes = ndimage.find_objects(component_labels)  # boxes[label - 1] = (row slice, col slice)
    kept_areas = areas[kept_labels - 1]
    box_rows = np.array([boxes[label - 1][0].start for label in kept_labels])
    box_cols = np.array([boxes[label - 1][1].start for label in kept_labels])

    # np.lexsort sorts by the last key first: max_score desc, then area desc, then y0, x0.
    order = np.lexsort((box_cols, box_rows, -kept_areas, -max_scores))
    regions = []
    for index in order:  # loop over regions, not pixels
        row_slice, col_slice = boxes[kept_labels[index] - 1]
        regions.append(
            Region(
                x0=int(col_slice.start),
                y0=int(row_slice.start),
                x1=int(col_slice.stop),
                y1=int(row_slice.stop),
                area=int(kept_areas[index]),
                max_score=float(max_scores[index]),
                mean_score=float(mean_scores[index]),
            )
        )
    return regions


def scale_regions(regions: Iterable[Region], sx: float, sy: float) -> list[Region]:
    """Regions with boxes scaled by (sx, sy), e.g. to draw map regions on a resized image.

    Box edges are rounded outwards (floor for x0/y0, ceil for x1/y1) so the scaled box still covers
    the region; ``area`` is scaled by ``sx * sy`` and rounded (at least 1); scores are unchanged.
    """
    sx, sy = float(sx), float(sy)
    for name, factor in (("sx", sx), ("sy", sy)):
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor {name} must be finite and > 0, got {factor!r}")
    # The tolerance keeps float noise (10 * 0.7 = 7.000000000000001) from growing a box by a pixel.
    tolerance = 1e-9
    return [
        Region(
            x0=math.floor(region.x0 * sx + tolerance),
            y0=math.floor(region.y0 * sy + tolerance),
            x1=math.ceil(region.x1 * sx - tolerance),
            y1=math.ceil(region.y1 * sy - tolerance),
            area=max(1, round(region.area * sx * sy)),
            max_score=region.max_score,
            mean_score=region.mean_score,
        )
        for region in regions
    ]


#: Regions smaller than this (working-resolution pixels) are noise, not defects: never shown, never counted.
MIN_REGION_AREA = 16

# 8-connectivity within each image of a stack [N, H, W], none across images: one label call for them all.
_STACK_STRUCTURE = np.zeros((3, 3, 3), bool)
_STACK_STRUCTURE[1] = True


def label_stack(masks: np.ndarray, min_area: int = MIN_REGION_AREA) -> tuple[np.ndarray, int]:
    """Connected regions of a stack of boolean masks [N, H, W], each within its own image, those smaller than
    `min_area` removed: (labels [N, H, W] with 0 = background and regions numbered 1…n, n)."""
    labels, count = ndimage.label(np.asarray(masks, bool), structure=_STACK_STRUCTURE)
    if count == 0 or min_area <= 1:
        return labels, count
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= min_area
    keep[0] = False
    renumber = np.zeros(count + 1, labels.dtype)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum())


def region_masks(maps: np.ndarray, threshold: float, min_area: int = MIN_REGION_AREA) -> np.ndarray:
    """Defect masks of a stack of maps: pixels above `threshold` in regions of at least `min_area` pixels."""
    maps = np.asarray(maps)
    above = np.greater(maps, threshold, where=~np.isnan(maps), out=np.zeros(maps.shape, bool))
    return label_stack(above, min_area)[0] > 0


def count_regions(maps: np.ndarray, threshold: float, min_area: int = MIN_REGION_AREA) -> int:
    """How many defect regions (`map > threshold`, at least `min_area` pixels) a stack of maps holds."""
    maps = np.asarray(maps)
    above = np.greater(maps, threshold, where=~np.isnan(maps), out=np.zeros(maps.shape, bool))
    return label_stack(above, min_area)[1]
