"""Feeding images to a model: decoding in a small thread pool, batching, and the held-out split."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.images import load_image
from ..data.preprocess import Geometry, Preprocessing
from ..data.protocol import PlacedImage
from ..errors import ImageLoadError

if TYPE_CHECKING:  # the torch-free runtime batches through `iter_arrays`
    import torch


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
                 workers: int = 2) -> Iterator[tuple[torch.Tensor, list[Geometry], list[int]]]:
    """`iter_arrays`'s batches as tensors (sharing their memory)."""
    import torch

    for array, geometries, indices in iter_arrays(items, preprocessing, batch_size, workers):
        yield torch.from_numpy(array), geometries, indices


def iter_arrays(items: Sequence[Any], preprocessing: Preprocessing, batch_size: int,
                workers: int = 2) -> Iterator[tuple[np.ndarray, list[Geometry], list[int]]]:
    """Decode and preprocess in a small thread pool, a bounded window ahead; yield normalised batches (float32
    N×3×H×W arrays) with each image's geometry and index in `items`.

    Images of one batch share their working size: when it varies (aspect mode), images wait in one group per
    size until a group is full; when more than two batches' worth wait, the largest group goes out early, so
    memory stays bounded. Batches then come out of order: the indices say where each image belongs.
    """

    def prepare(item: Any) -> tuple[np.ndarray, Geometry]:
        # An image the model cannot judge (too small, too long and thin) is refused naming its file, as load_image
        # names an unreadable one.
        name = item_name(item)
        return preprocessing.apply_geometry(decode(item), name=None if name == "<array>" else name)

    def emit(group: list[tuple[int, np.ndarray, Geometry]]) -> tuple[np.ndarray, list[Geometry], list[int]]:
        indices, images, geometries = zip(*group)
        return preprocessing.normalize_array(np.stack(images)), list(geometries), list(indices)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        queue = iter(enumerate(items))
        window = 2 * batch_size
        for index, item in queue:
            pending.append((index, pool.submit(prepare, item)))
            if len(pending) >= window:
                break
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, Geometry]]] = {}
        waiting = 0
        while pending:
            index, future = pending.popleft()
            image, geometry = future.result()
            group = groups.setdefault(image.shape, [])
            group.append((index, image, geometry))
            waiting += 1
            next_item = next(queue, None)
            if next_item is not None:
                pending.append((next_item[0], pool.submit(prepare, next_item[1])))
            if len(group) == batch_size:
                yield emit(groups.pop(image.shape))
                waiting -= batch_size
            elif waiting > window:
                largest = max(groups, key=lambda shape: len(groups[shape]))
                waiting -= len(groups[largest])
                yield emit(groups.pop(largest))
        for group in groups.values():
            yield emit(group)


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
