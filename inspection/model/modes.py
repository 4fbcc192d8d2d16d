"""The resize modes that change how a batch is scored: tiles (every tile scored, the maps stitched into one per
image) and aspect (images of several sizes padded into one batch, the padding kept out of every score)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..ops.tiles import cut_tiles, stitch
from .views import ScoredBatch

#: Scores a batch of normalised images (tiles, or whole images): `AnomalyModel._score_detailed` without panels.
ScoreBatch = Callable[[torch.Tensor], ScoredBatch]


def tiles(images: torch.Tensor, side: int, overlap: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The side × side tiles of a batch of resized images, at most `batch_size` at a time."""
    yield from cut_tiles(images, side, overlap).split(batch_size)


def score_tiled(images: torch.Tensor, score: ScoreBatch, side: int, overlap: int, batch_size: int | None
                ) -> ScoredBatch:
    """Tiles mode: every tile scored, the maps stitched into one per image, the image score the highest tile's.
    `batch_size` None scores all the tiles at once (an exported graph: a traced split would fix the batch size)."""
    chunks = tiles(images, side, overlap, batch_size) if batch_size else [cut_tiles(images, side, overlap)]
    parts = [score(chunk) for chunk in chunks]
    tile_maps = torch.cat([part.maps for part in parts])
    tile_scores = torch.cat([part.scores for part in parts]).view(images.shape[0], -1)
    maps = stitch(tile_maps, int(images.shape[-2]), int(images.shape[-1]), overlap)
    return ScoredBatch(maps, tile_scores.max(dim=1).values)


def content_sizes(images: torch.Tensor, seen: Sequence[tuple[int, int]] | None) -> torch.Tensor:
    """Aspect mode: [B, 2] the height and width of each image's content in the padded batch (all of it when the
    geometries are not known)."""
    sizes = list(seen) if seen else [tuple(images.shape[-2:])] * len(images)
    return torch.tensor(sizes, dtype=torch.long, device=images.device).view(-1, 2)


def without_padding(maps: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Aspect mode: the maps with NaN on each image's padding (rows or columns beyond its content)."""
    rows = torch.arange(maps.shape[-2], device=content.device)[None, :, None] >= content[:, 0, None, None]
    columns = torch.arange(maps.shape[-1], device=content.device)[None, None, :] >= content[:, 1, None, None]
    return maps.masked_fill(rows | columns, float("nan"))
