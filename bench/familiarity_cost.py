"""What the "unlike the training data" check costs per image: its descriptor pass (EfficientNet-Lite0 to stride 16
at 224 × 224) and its nearest-neighbour search, beside a default PatchCore's whole prediction, on the same batch.

    python bench/familiarity_cost.py [--out bench/familiarity-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from inspection import __version__
from inspection.model.familiarity import describe_images, nearest_distance
from inspection.registry import create_model


def median_ms(call, repeats: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/familiarity-cost"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("patchcore")
    model.fit([(torch.rand(256, 256, 3) * 255).byte().numpy() for _ in range(12)])  # the cost, not the accuracy
    bank = F.normalize(torch.randn(1000, model.familiarity_bank.shape[1]), dim=1)
    rows = []
    for batch in (1, 16):
        images = torch.rand(batch, 3, 256, 256)
        normalised = (images - 0.5) / 0.5
        describe = median_ms(lambda images=images: describe_images(images)) / batch
        vectors = describe_images(images)
        search = median_ms(lambda vectors=vectors: nearest_distance(vectors, bank)) / batch
        with_check = median_ms(lambda normalised=normalised: model.predict_tensor(normalised)) / batch
        rows.append({"batch": batch, "describe_ms": describe, "search_ms_bank_1000": search,
                     "patchcore_predict_ms": with_check})
    load = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"results": rows, "load_average_1min": load,
                                                       "threads": torch.get_num_threads()}, indent=1))
    lines = ["| batch | descriptor ms/img | search ms/img (1000 vectors) | PatchCore map+score ms/img (no check) |",
             "|---|---|---|---|"]
    lines += [f"| {row['batch']} | {row['describe_ms']:.1f} | {row['search_ms_bank_1000']:.3f} | "
              f"{row['patchcore_predict_ms']:.1f} |" for row in rows]
    lines.append(f"\nMeasured {datetime.now(timezone.utc):%Y-%m-%d} with inspection {__version__}, torch "
                 f"{torch.__version__}, {torch.get_num_threads()} CPU threads, load {load:.2f} at the end; medians of "
                 "15 calls after 3 warm-ups, 256 × 256 inputs; PatchCore at its defaults (`predict_tensor`: the "
                 "method's map and score, which the check is added to in `predict`).\n")
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
