"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), on a random projection.

Truly greedy: each step picks the point farthest from everything selected so far. Only an N-vector of
minimum distances is kept, never an N×N matrix; blocks of points catch up on new centres lazily.
"""

from __future__ import annotations

import heapq
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
                   progress: Callable[[int, int], None] | None = None, block: int = 512) -> torch.Tensor:
    """Indices of `n_select` points chosen by greedy k-center, starting from `start_index`.

    The exact greedy, evaluated lazily: the points are cut into blocks of `block` rows, and a block catches up
    on the centres chosen since it last looked only when it might hold the next farthest point (its stale
    maximum distance, an upper bound, is the largest). Minimum distances only shrink, so a block whose stale
    maximum is below an up-to-date block's true one cannot hold the farthest point, and the choice is the one the
    plain greedy makes (up to float rounding in exact ties). A catch-up is one matrix product of the block with
    its pending centres: compute-bound work instead of one pass over all points per step, which is
    memory-bound (several times faster on large sets: `bench/coreset/`; with `block >= len(points)` every point
    catches up at every step, as in the plain greedy). Ties go to the lowest index
    (torch.argmax's rule), which makes the result reproducible.
    """
    n_points, dim = points.shape
    n_select = max(1, min(n_select, n_points))
    block = max(1, min(block, n_points))
    n_blocks = math.ceil(n_points / block)
    sq_norms = points.pow(2).sum(1)
    selected = torch.empty(n_select, dtype=torch.long, device=points.device)
    centers = torch.empty(n_select, dim, dtype=points.dtype, device=points.device)
    center_sq_norms = torch.empty(n_select, dtype=points.dtype, device=points.device)
    min_distances = torch.full((n_points,), float("inf"), dtype=points.dtype, device=points.device)
    caught_up = [0] * n_blocks  # centres each block has seen
    # Max-heap of (−stale maximum, block): ties go to the lowest block, then argmax takes the lowest row.
    stale_maxima = [(-math.inf, b) for b in range(n_blocks)]
    index = start_index
    report_every = max(1, n_select // 100)
    for step in range(n_select):
        selected[step] = index
        centers[step], center_sq_norms[step] = points[index], sq_norms[index]
        if progress is not None and (step + 1) % report_every == 0:
            progress(step + 1, n_select)
        if step + 1 == n_select:
            break
        while caught_up[stale_maxima[0][1]] <= step:
            b = heapq.heappop(stale_maxima)[1]
            rows = slice(b * block, (b + 1) * block)
            own = min_distances[rows]
            # Pending centres in slices bound the distance matrix to block × 4096.
            for first in range(caught_up[b], step + 1, 4096):
                pending = slice(first, min(step + 1, first + 4096))
                distances = torch.addmm(sq_norms[rows, None] + center_sq_norms[None, pending], points[rows],
                                        centers[pending].T, alpha=-2.0)
                torch.minimum(own, distances.amin(1), out=own)
            caught_up[b] = step + 1
            heapq.heappush(stale_maxima, (-float(own.max()), b))
        b = stale_maxima[0][1]
        index = b * block + int(torch.argmax(min_distances[b * block:(b + 1) * block]))
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


def extend_coreset(points: torch.Tensor, distances: torch.Tensor, radius: float) -> torch.Tensor:
    """Indices of the `points` [N, C] that one incremental step of the greedy k-center adds to a coreset whose
    covering radius is `radius`: the farthest point while it lies farther than `radius` from every centre — the
    coreset's and those added so far. `distances` [N] are the points' distances to the coreset (the same space).

    The greedy stops where the coreset covers the points as it covered its own: a point within `radius` of a centre
    adds nothing, so teaching the same picture twice adds nothing the second time."""
    distances = distances.clone()
    chosen: list[int] = []
    while distances.numel():
        index = int(torch.argmax(distances))
        if not float(distances[index]) > radius:
            break
        chosen.append(index)
        # One new centre: every point's distance to the nearest centre is updated with one vector operation.
        torch.minimum(distances, (points - points[index]).norm(dim=1), out=distances)
    return torch.tensor(chosen, dtype=torch.long, device=points.device)


def covering_radius(centres: torch.Tensor, block: int = 4096) -> float:
    """A greedy k-center coreset's covering radius, read off the coreset itself: the smallest distance between two of
    its centres. Each centre was the farthest point from those chosen before it, so the distances at which the
    centres were chosen never grow and the last one is the smallest pairwise distance; the radius after the last
    choice is at most that (the coreset of one chunk; across chunks the estimate only gets smaller, i.e. stricter).
    Blocks of `block` rows bound the distance matrix."""
    if centres.shape[0] < 2:
        return 0.0
    sq_norms = centres.pow(2).sum(1)
    smallest = math.inf
    for start in range(0, centres.shape[0], block):
        rows = slice(start, start + block)
        squared = torch.addmm(sq_norms[rows, None] + sq_norms[None, :], centres[rows], centres.T, alpha=-2.0)
        own = torch.arange(start, min(start + block, centres.shape[0]), device=centres.device)
        squared[own - start, own] = math.inf
        smallest = min(smallest, float(squared.amin()))
    return math.sqrt(max(smallest, 0.0))
