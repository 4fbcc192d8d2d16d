"""Browsing a dataset: filters, pages of thumbnails, an image's details, counts per split and type."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspection.data.datasets import GOOD, Dataset, Sample
from inspection.data.images import load_image, read_image_info

SPLITS = ("all", "train", "test")


def filter_samples(dataset: Dataset, split: str = "all", defect_type: str = "all") -> list[Sample]:
    """The dataset's samples of one split ("all", "train", "test") and one type ("all", "good", a defect)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    samples = {"all": dataset.train + dataset.test, "train": dataset.train, "test": dataset.test}[split]
    if defect_type != "all":
        samples = [sample for sample in samples if sample.defect_type == defect_type]
    return samples


def page_count(n_items: int, per_page: int) -> int:
    """Pages needed for `n_items` (at least 1)."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    return max(1, math.ceil(n_items / per_page))


def page_items(items: Sequence[Any], page: int, per_page: int) -> list[Any]:
    """Items of 1-based page `page` (clamped to the last page)."""
    page = min(max(1, int(page)), page_count(len(items), per_page))
    return list(items[(page - 1) * per_page: page * per_page])


#: The letterbox around thumbnails of other aspect ratios: a grid of mixed images stays even.
THUMBNAIL_BACKGROUND = 240


def thumbnail(path: str | os.PathLike, size: int = 160) -> np.ndarray:
    """A size×size RGB preview: the image scaled to fit (area interpolation), centred on a light square, so that
    a grid of mixed aspect ratios lines up."""
    image = load_image(path, max_side=4 * size)
    scale = min(1.0, size / max(image.shape[:2]))
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    if scale < 1:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), THUMBNAIL_BACKGROUND, np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top: top + height, left: left + width] = image
    return canvas


def sample_details(sample: Sample, root: Path | None = None) -> dict[str, Any]:
    """File, split, type, size and mode of a sample, read from its header (pixels are not decoded)."""
    header = read_image_info(sample.path)
    return {"file": str(sample.path.relative_to(root)) if root else sample.path.name, "split": sample.split,
            "type": sample.defect_type, "size": f"{header['width']} × {header['height']}",
            "mode": header["mode"], "format": header["format"] or "?",
            "file size": f"{sample.path.stat().st_size / 1024:.1f} KB",
            "ground-truth mask": "yes" if sample.mask_path else ("—" if sample.label == 0 else "none")}


def count_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """Images per split and type, as table rows."""
    return [{"split": split, "type": defect_type, "images": count}
            for split, by_type in dataset.counts().items() for defect_type, count in by_type.items()]


def sample_label(sample: Sample) -> str:
    """A short name for pickers: 'test/hole/003.png'."""
    return f"{sample.split}/{sample.defect_type}/{sample.path.name}"


def grid_caption(sample: Sample) -> str:
    """A thumbnail's caption in the dataset grid: split and type, then the file ('train/good · 003.png'), so that
    good training images and good test images are told apart when both splits are shown."""
    return f"{sample.split}/{sample.defect_type} · {sample.path.name}"


def default_compare_samples(dataset: Dataset, per_type: int = 1) -> list[Sample]:
    """A few test images: the first of each type (good first), for a quick comparison."""
    chosen: list[Sample] = []
    types = [GOOD] + dataset.defect_types()
    for defect_type in types:
        chosen.extend([sample for sample in dataset.test if sample.defect_type == defect_type][:per_type])
    return chosen
