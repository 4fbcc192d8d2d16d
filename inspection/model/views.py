"""What a method shows of its work on an image, beside the anomaly map: panels, in a form any page can draw.

A method's `_score_detailed` returns a `ScoredBatch`: the maps and scores every method has, the images its maps
compare against (`reconstructions`, for methods that reconstruct), and — only when asked, since they cost
memory — each image's `Panel` list. Pages draw the panels in order with no method-specific code:

- ``panel.image`` with 3 dimensions is an RGB uint8 picture [H, W, 3]: show it as it is (a strip of several
  frames side by side is one such picture, wider than high);
- with 2 dimensions it is a float map [H, W]: colour it with the heatmap colours, scaled over
  ``panel.value_range`` (low, high) when given — several panels of one image then share one scale — or over
  the map's own minimum..maximum when it is None;
- ``panel.title`` is its caption, ``panel.note`` a sentence saying how to read it (may be empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the torch-free runtime reads `Panel` through the prediction
    import torch


@dataclass(eq=False)
class Panel:
    """One picture of a method's view of an image: an RGB uint8 [H, W, 3] image or a float map [H, W]."""

    title: str
    image: np.ndarray
    note: str = ""
    value_range: tuple[float, float] | None = None  # for float maps: the colour scale's (low, high)

    def __post_init__(self) -> None:
        is_rgb = self.image.ndim == 3 and self.image.shape[2] == 3 and self.image.dtype == np.uint8
        if not (is_rgb or self.image.ndim == 2):
            raise ValueError(f"panel {self.title!r}: an image must be RGB uint8 [H, W, 3] or a float map [H, W], "
                             f"got shape {self.image.shape} and dtype {self.image.dtype}")

    @property
    def is_map(self) -> bool:
        """True for a float map (coloured by the page), False for an RGB picture."""
        return self.image.ndim == 2


@dataclass
class ScoredBatch:
    """A method's result for a batch: maps and scores, reconstructions when it has them, panels when asked."""

    maps: torch.Tensor  # [B, H, W] at the working resolution
    scores: torch.Tensor  # [B]
    reconstructions: torch.Tensor | None = None  # [B, C, H, W] in [0, 1], C = 1 or 3: what the map compares with
    panels: list[list[Panel]] | None = None  # per image, in the order a page shows them


def rgb_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] images in [0, 1] (C = 1 or 3) → [B, H, W, 3] uint8 (grey repeated into three channels)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def frame_strip(frames: torch.Tensor, gap: int = 2) -> np.ndarray:
    """[T, C, H, W] frames in [0, 1] → one RGB uint8 picture [H, T·W + (T−1)·gap, 3], frames left to right."""
    pictures = rgb_uint8(frames)
    height = pictures.shape[1]
    separator = np.full((height, gap, 3), 255, np.uint8)
    pieces = []
    for index, picture in enumerate(pictures):
        if index:
            pieces.append(separator)
        pieces.append(picture)
    return np.concatenate(pieces, axis=1)


def map_panels(maps: torch.Tensor, titles: list[str], note: str = "",
               shared_scale: bool = True) -> list[list[Panel]]:
    """Panels of float maps [B, K, H, W]: K panels per image, on one colour scale per image when `shared_scale`."""
    values = maps.detach().float().cpu().numpy()
    panels = []
    for per_image in values:
        value_range = (0.0, float(per_image.max()) or 1.0) if shared_scale else None
        panels.append([Panel(title, np.ascontiguousarray(per_image[index]), note, value_range)
                       for index, title in enumerate(titles)])
    return panels
