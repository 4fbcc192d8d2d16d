"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), on a random projection.

Truly greedy: each step picks the point farthest from everything selected so far. Only an N-vector of
minimum distances is kept, never an N×N matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch


def random_projection(features: torch.Tensor, dimension: int, seed: int) -> torch.Tensor:
    """Gaussian random projection to `dimension` (Johnson–Lindenstrauss): distances are roughly kept, cheaper."""
    if dimension <= 0 or dimension >= features.shape[1]:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dimension, generator=generator) / dimension ** 0.5
    return features @ matrix.to(features.device, features.dtype)


def greedy_coreset(points: torch.Tensor, n_select: int, start_index: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Indices of `n_select` points chosen by greedy k-center, starting from `start_index`.

    Ties go to the lowest index (torch.argmax's rule), which makes the result reproducible.
    """
    n_points = points.shape[0]
    n_select = max(1, min(n_select, n_points))
    # Points stored as [D, N]: the per-step product `center @ points_t` streams memory contiguously.
    points_t = points.T.contiguous()
    sq_norms = points_t.pow(2).sum(0)
    selected = torch.empty(n_select, dtype=torch.long, device=points.device)
    min_distances = torch.full((n_points,), float("inf"), dtype=points.dtype, device=points.device)
    index = torch.tensor(start_index, device=points.device)
    report_every = max(1, n_select // 100)
    for step in range(n_select):
        selected[step] = index
        center = points_t[:, index]
        distances = sq_norms - 2.0 * (center @ points_t) + sq_norms[index]
        torch.minimum(min_distances, distances, out=min_distances)
        index = torch.argmax(min_distances)
        if progress is not None and (step + 1) % report_every == 0:
            progress(step + 1, n_select)
    return selected


def chunked_coreset(parts: Iterable[torch.Tensor], ratio: float, chunk_patches: int, projection_dim: int, seed: int,
                    progress: Callable[[int, int], None] | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy coreset of patches [N, C] that arrive in parts, selected chunk by chunk: a chunk closes once the parts
    gathered hold at least `chunk_patches` patches (0: one chunk of everything). Yields (the chunk's patches, the
    indices chosen among them), `ratio` of each chunk, on its `projection_dim` random projection; chunk starts
    are drawn from `seed`. Only one chunk is held at a time."""
    limit = chunk_patches or math.inf
    starts = torch.Generator().manual_seed(seed)
    pending: list[torch.Tensor] = []
    gathered = 0

    def select() -> tuple[torch.Tensor, torch.Tensor]:
        patches = torch.cat(pending)
        start = int(torch.randint(patches.shape[0], (1,), generator=starts))
        chosen = greedy_coreset(random_projection(patches, projection_dim, seed),
                                max(1, math.ceil(ratio * patches.shape[0])), start, progress=progress)
        return patches, chosen

    for part in parts:
        pending.append(part)
        gathered += part.shape[0]
        if gathered >= limit:
            yield select()
            pending, gathered = [], 0
    if pending:
        yield select()
