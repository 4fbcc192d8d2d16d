"""Feeding images to a model: decoding in a small thread pool, batching, and the held-out split."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..data.images import load_image
from ..data.preprocess import Geometry, Preprocessing
from ..data.protocol import PlacedImage
from ..errors import ImageLoadError


def decode(item: Any) -> np.ndarray:
    """A path, bytes, an array or a PlacedImage → H×W×3 uint8 RGB (arrays are checked, files go through
    load_image, a placed image is its file moved by its protocol)."""
    if isinstance(item, PlacedImage):
        return item.load()
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[:, :, None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ImageLoadError(f"image arrays must be H×W×3 uint8 RGB, got shape {item.shape} and dtype "
                                 f"{item.dtype}")
        return item
    return load_image(item)


def iter_batches(items: Sequence[Any], preprocessing: Preprocessing, batch_size: int,
                 workers: int = 2) -> Iterator[tuple[torch.Tensor, list[Geometry]]]:
    """Decode and preprocess in a small thread pool, a bounded window ahead; yield normalised batches."""

    def prepare(item: Any) -> tuple[np.ndarray, Geometry]:
        return preprocessing.apply_geometry(decode(item))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        queue = iter(items)
        window = 2 * batch_size
        for item in queue:
            pending.append(pool.submit(prepare, item))
            if len(pending) >= window:
                break
        batch: list[tuple[np.ndarray, Geometry]] = []
        while pending:
            batch.append(pending.popleft().result())
            next_item = next(queue, None)
            if next_item is not None:
                pending.append(pool.submit(prepare, next_item))
            if len(batch) == batch_size or not pending:
                images, geometries = zip(*batch)
                yield preprocessing.normalize(np.stack(images)), list(geometries)
                batch = []


def split_holdout(n_images: int, fraction: float, minimum: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out): a seeded share of the good images kept apart for calibration."""
    n_holdout = max(math.ceil(fraction * n_images), minimum) if fraction > 0 else 0
    # Keep most images for fitting when there are few: never hold out more than a third.
    n_holdout = min(n_holdout, n_images // 3) if n_holdout else 0
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def item_name(item: Any) -> str:
    """How an image given to fit/predict is named in a model's records: its path, or "<array>"."""
    if isinstance(item, PlacedImage):
        return str(item.path)
    return str(item) if isinstance(item, (str, os.PathLike)) else "<array>"
