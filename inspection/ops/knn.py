"""Chunked nearest-neighbour search in torch: memory stays bounded whatever the bank size."""

from __future__ import annotations

import torch

# A query whose nearest squared distance is under this share of |q|² + |b|² (both about the bank's mean) is a near
# copy of a bank row: there the expansion's rounding (float32 keeps about 1e-7 of that sum, less over a long sum) is
# of the order of the distance itself, and the square root magnifies it (2e-5 of rounding in the squared distance of
# an exact copy is a distance of 4.5e-3). Its distances are computed again from the differences.
NEAR_COPY = 1e-3
# Rows among which the expansion may have mistaken the order of a near copy's neighbours: its noise is far below the
# spacing of a coreset's rows, so a few more than k are enough to hold the true k nearest.
EXTRA_CANDIDATES = 3


def nearest_neighbors(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *,
                      max_elements: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances [q, k] (Euclidean, ascending) and indices [q, k] of each query's k nearest bank rows.

    Work is split into query chunks × bank chunks so that no block holds more than `max_elements`
    distances (4 MiB in float32 by default); a running top-k is merged across bank chunks.
    """
    # 4 MiB blocks stay in the CPU's cache while the minimum is taken: 64 MiB blocks made a batch of 16 images
    # slower per image than one image alone (bench/runtimes/).
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    k = min(k, bank.shape[0])
    # |q − b|² = |q|² − 2 q·b + |b|² loses the digits of a small distance between long vectors to cancellation, by
    # an amount that depends on the order the product is summed in: torch and OpenVINO gave one Patch SVDD map 5e-3
    # apart in a range of 5 (bottle, whose background patches are near copies of bank rows). Both sides moved by the
    # bank's mean keep every distance and shorten the vectors to their spread about it; near copies, where that is
    # not enough, are then measured exactly.
    centre = bank.mean(0)
    queries = queries - centre
    if torch.onnx.is_in_onnx_export():
        return _exported_search(queries, bank - centre, k)
    bank_chunk = max(k, min(bank.shape[0], max_elements // 1024))
    query_chunk = max(1, max_elements // bank_chunk)
    # The bank is moved chunk by chunk, never copied whole (a bank may be most of the memory a model holds).
    starts = range(0, bank.shape[0], bank_chunk)
    bank_sq_norms = torch.cat([(bank[start: start + bank_chunk] - centre).pow(2).sum(1) for start in starts])
    all_distances, all_indices = [], []
    for q_start in range(0, queries.shape[0], query_chunk):
        query = queries[q_start: q_start + query_chunk]
        query_sq_norms = query.pow(2).sum(1, keepdim=True)
        squared, indices = _expansion_search(query, bank, centre, bank_sq_norms, k, bank_chunk)
        squared = squared.add_(query_sq_norms).clamp_min_(0.0)
        near = (squared[:, 0] < NEAR_COPY * (query_sq_norms[:, 0] + bank_sq_norms[indices[:, 0]])).nonzero()[:, 0]
        if near.numel():
            candidates = _expansion_search(query[near], bank, centre, bank_sq_norms,
                                           min(k + EXTRA_CANDIDATES, bank.shape[0]), bank_chunk)[1]
            squared[near], indices[near] = _exact_nearest(query[near], bank[candidates] - centre, candidates, k)
        all_distances.append(squared)
        all_indices.append(indices)
    return torch.cat(all_distances).sqrt_(), torch.cat(all_indices)


def _expansion_search(query: torch.Tensor, bank: torch.Tensor, centre: torch.Tensor, bank_sq_norms: torch.Tensor,
                      k: int, bank_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|q − b|² − |q|² and indices of the k nearest rows (ascending), by the expansion, bank chunk by bank chunk."""
    best_d = torch.full((query.shape[0], 0), float("inf"), device=query.device, dtype=query.dtype)
    best_i = torch.empty((query.shape[0], 0), device=query.device, dtype=torch.long)
    for b_start in range(0, bank.shape[0], bank_chunk):
        # |b|² − 2 q·b in one fused pass; |q|² is the same along a row, so it is added after the selection (and the
        # clamp at 0 with it): the large block is written once and read once.
        block = torch.addmm(bank_sq_norms[None, b_start: b_start + bank_chunk], query,
                            (bank[b_start: b_start + bank_chunk] - centre).T, alpha=-2.0)
        if k == 1:  # the common case: a minimum is several times cheaper than a top-k
            block_d, block_i = (values[:, None] for values in block.min(dim=1))
        else:
            block_d, block_i = block.topk(min(k, block.shape[1]), dim=1, largest=False)
        best_d = torch.cat([best_d, block_d], 1)
        best_i = torch.cat([best_i, block_i + b_start], 1)
        best_d, order = best_d.topk(min(k, best_d.shape[1]), dim=1, largest=False)
        best_i = best_i.gather(1, order)
    return best_d, best_i


def _exact_nearest(query: torch.Tensor, candidate_rows: torch.Tensor, candidates: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices of the k nearest of each query's candidates (rows [q, c, C], their indices
    [q, c]), from the differences."""
    squared = (query[:, None, :] - candidate_rows).pow(2).sum(2)
    squared, order = squared.topk(k, dim=1, largest=False)
    return squared, candidates.gather(1, order)


def _exported_search(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The search as one graph (queries and bank already centred): an exported graph takes any batch size, and the
    chunk loops, unrolled for the example batch, would not. One block then, of (patches of a batch) × bank
    distances: the runtime bounds it by running slices of a batch (`runtime.exported.SLICE_PIXELS`). Every query's
    candidates are measured again: picking out the near copies first gives the graph a shape known only at run time,
    and OpenVINO then ran the whole PatchCore graph 1.2–1.7 times slower."""
    block = torch.addmm(bank.pow(2).sum(1)[None, :], queries, bank.T, alpha=-2.0)
    candidates = block.topk(min(k + EXTRA_CANDIDATES, bank.shape[0]), dim=1, largest=False).indices
    squared, indices = _exact_nearest(queries, bank[candidates], candidates, k)
    return squared.sqrt(), indices
