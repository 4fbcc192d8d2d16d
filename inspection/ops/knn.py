"""Chunked nearest-neighbour search in torch: memory stays bounded whatever the bank size."""

from __future__ import annotations

import torch


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
    # bank's mean keep every distance and shorten the vectors to their spread about it.
    centre = bank.mean(0)
    queries = queries - centre
    if torch.onnx.is_in_onnx_export():
        # An exported graph takes any batch size: the chunk loops, unrolled for the example batch, would not. One
        # block then, of (patches of a batch) × bank distances: the runtime bounds it by running slices of a batch
        # (`runtime.exported.SLICE_PIXELS`).
        bank = bank - centre
        block = torch.addmm(bank.pow(2).sum(1)[None, :], queries, bank.T, alpha=-2.0)
        distances, indices = block.topk(k, dim=1, largest=False) if k > 1 else (
            values[:, None] for values in block.min(dim=1))
        return distances.add(queries.pow(2).sum(1, keepdim=True)).clamp_min(0.0).sqrt(), indices
    bank_chunk = max(k, min(bank.shape[0], max_elements // 1024))
    query_chunk = max(1, max_elements // bank_chunk)
    # The bank is moved chunk by chunk, never copied whole (a bank may be most of the memory a model holds).
    starts = range(0, bank.shape[0], bank_chunk)
    bank_sq_norms = torch.cat([(bank[start: start + bank_chunk] - centre).pow(2).sum(1) for start in starts])
    all_distances, all_indices = [], []
    for q_start in range(0, queries.shape[0], query_chunk):
        query = queries[q_start: q_start + query_chunk]
        best_d = torch.full((query.shape[0], 0), float("inf"), device=queries.device, dtype=queries.dtype)
        best_i = torch.empty((query.shape[0], 0), device=queries.device, dtype=torch.long)
        for b_start in starts:
            # |b|² − 2 q·b in one fused pass; |q|² is the same along a row, so it is added after the selection
            # (and the clamp at 0 with it): the large block is written once and read once.
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
        all_distances.append(best_d.add_(query.pow(2).sum(1, keepdim=True)).clamp_min_(0.0))
        all_indices.append(best_i)
    return torch.cat(all_distances).sqrt_(), torch.cat(all_indices)
