"""What PatchCore's faster bank selections cost in coverage, against the plain exact greedy (one pass over all
patches per step), on the good training patches of one category: the lazy blocks of the default selection, and
selection chunk by chunk (`coreset_chunk`).

    python bench/coreset_chunks.py --data DATA/magnetic_tile --category magnetic_tile --chunks 0 150000 100000 70000 \
        --set resize_mode=full intensity=standardize --out bench/coreset

It times the plain greedy (one pass over all patches per step, as PatchCore selected before the lazy blocks), then
the default selection for each chunk size (0: one selection over all patches). For each bank it measures the
coverage radius — the largest (and the mean) distance from a good patch to its nearest bank patch, in the full
feature space — and the share of the plain greedy's bank it holds; it writes coreset.json and coreset.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from inspection.bench.run import environment_record, parse_settings
from inspection.data.datasets import open_dataset
from inspection.device import configure_threads
from inspection.model.batching import iter_batches, split_holdout
from inspection.ops.coreset import chunked_coreset, random_projection
from inspection.ops.knn import nearest_neighbors
from inspection.registry import create_model


def good_patches(model, images) -> list[torch.Tensor]:
    """The patch embeddings of the images the model fits on (its held-out share left out), one tensor per batch in
    fitting order."""
    model._ensure_setup()
    fit_index, _ = split_holdout(len(images), model.holdout_fraction, model.min_holdout,
                                 model.seed)
    parts = []
    with torch.no_grad():
        for tensor, _, _ in iter_batches([images[i] for i in fit_index], model.preprocessing,
                                         model.batch_size):
            parts.append(model.embed(model.features(tensor))[0])
    return parts


def plain_greedy(points: torch.Tensor, n_select: int, start_index: int) -> torch.Tensor:
    """Reference: the exact greedy as one pass over all points per step (the selection before the lazy blocks)."""
    points_t = points.T.contiguous()  # [D, N]: the per-step product streams memory contiguously
    sq_norms = points_t.pow(2).sum(0)
    selected = torch.empty(n_select, dtype=torch.long)
    min_distances = torch.full((points.shape[0],), float("inf"))
    index = torch.tensor(start_index)
    for step in range(n_select):
        selected[step] = index
        distances = sq_norms - 2.0 * (points_t[:, index] @ points_t) + sq_norms[index]
        torch.minimum(min_distances, distances, out=min_distances)
        index = torch.argmax(min_distances)
    return selected


def select_plain(batches: list[torch.Tensor], ratio: float, dim: int, seed: int) -> tuple[torch.Tensor, int]:
    """The plain greedy over all patches, from the start and on the projection the default selection uses."""
    patches = torch.cat(batches)
    start = int(torch.randint(patches.shape[0], (1,), generator=torch.Generator().manual_seed(seed)))
    return plain_greedy(random_projection(patches, dim, seed), math.ceil(ratio * patches.shape[0]), start), 1


def select(batches: list[torch.Tensor], ratio: float, chunk: int, dim: int, seed: int) -> tuple[torch.Tensor, int]:
    """(bank indices into the concatenated patches, the number of chunks), selected by PatchCore's own chunked
    selection (`ops.coreset.chunked_coreset`) for this chunk size."""
    chosen, offset = [], 0
    for patches, indices in chunked_coreset(batches, ratio, chunk, dim, seed):
        chosen.append(offset + indices)
        offset += patches.shape[0]
    return torch.cat(chosen), len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 150000, 100000, 70000])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    configure_threads()
    model = create_model("patchcore", **parse_settings(args.set, args.category))
    dataset = open_dataset(args.data, args.category)
    started = time.perf_counter()
    batches = good_patches(model, [sample.source for sample in dataset.train])
    extract_s = time.perf_counter() - started
    patches = torch.cat(batches)
    rows, plain_bank = [], None
    ratio, dim, seed = model.coreset_ratio, model.projection_dim, model.seed
    for chunk in [None] + args.chunks:  # None: the plain greedy, the reference
        started = time.perf_counter()
        selected, n_chunks = (select_plain(batches, ratio, dim, seed) if chunk is None else
                              select(batches, ratio, chunk, dim, seed))
        seconds = time.perf_counter() - started
        plain_bank = set(selected.tolist()) if plain_bank is None else plain_bank
        distances = nearest_neighbors(patches, patches[selected], k=1)[0][:, 0]
        rows.append({"selection": "plain" if chunk is None else "lazy blocks", "coreset_chunk": chunk or 0,
                     "chunks": n_chunks,
                     "bank": int(selected.numel()), "selection_s": round(seconds, 2),
                     "coverage_radius": float(distances.max()), "mean_distance": float(distances.mean()),
                     "share_of_plain_bank": len(plain_bank & set(selected.tolist())) / len(plain_bank)})
        print(rows[-1], flush=True)
    exact = rows[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment_record(), "category": args.category, "settings": args.set,
              "patches": int(patches.shape[0]), "feature_extraction_s": round(extract_s, 1), "results": rows}
    (out / "coreset.json").write_text(json.dumps(report, indent=2))
    lines = [f"PatchCore bank selection on {patches.shape[0]} good patches of {args.category} "
             f"({' '.join(args.set) or 'default settings'}; features extracted in {extract_s:.1f} s)", "",
             "| selection | coreset_chunk | chunks | bank | selection s | speed-up | coverage radius | vs plain | "
             "mean distance | share of the plain bank |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['selection']} | {row['coreset_chunk'] or '0 (all)'} | {row['chunks']} | {row['bank']} | "
                     f"{row['selection_s']:.1f} | {exact['selection_s'] / row['selection_s']:.1f}× | "
                     f"{row['coverage_radius']:.2f} | {row['coverage_radius'] / exact['coverage_radius']:.3f} | "
                     f"{row['mean_distance']:.2f} | {row['share_of_plain_bank']:.3f} |")
    (out / "coreset.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
