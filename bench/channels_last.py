"""What running the backbones' convolutions on channels-last tensors gains on the CPU.

For every backbone in the registry, times its feature extractor (the layers at strides 8 and 16, PatchCore's
default) on random images of two working sizes — a 224 × 224 square and a 256 × 640 frame (a KolektorSDD
part at the aspect mode's default shorter side) — at batch size 1 and 16, once with the usual NCHW layout and
once channels-last (the default on the CPU since this bench), alternating the two, each call in turn. Speed does
not depend on the weights' values, so the backbones are built with random weights (no weight file needed).
Writes `results.json` and `results.md` into --out (default bench/channels-last).

    python bench/channels_last.py [--repeats 3] [--backbones efficientnet_lite0 …] [--out bench/channels-last]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from inspection.bench.run import environment_record
from inspection.features.extractor import create_feature_extractor
from inspection.registry import backbones

SIZES = ((224, 224), (640, 256))  # (height, width)
BATCHES = (1, 16)


def ms_per_image(extractor: torch.nn.Module, images: torch.Tensor) -> float:
    """Milliseconds per image of one forward pass over the batch, after one warm-up call."""
    with torch.no_grad():
        extractor(images)
        started = time.perf_counter()
        extractor(images)
    return (time.perf_counter() - started) * 1000 / images.shape[0]


def measure(name: str, repeats: int) -> list[dict]:
    extractor, _ = create_feature_extractor(name, "8,16", weights="random")
    rows = []
    for height, width in SIZES:
        for batch in BATCHES:
            images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
            timings: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeats):  # alternated, so that a change in the machine's load hits both alike
                for channels_last in (False, True):
                    extractor.channels_last = channels_last
                    timings[channels_last].append(ms_per_image(extractor, images))
            nchw, last = statistics.median(timings[False]), statistics.median(timings[True])
            rows.append({"backbone": name, "height": height, "width": width, "batch": batch,
                         "nchw_ms_per_image": nchw, "channels_last_ms_per_image": last, "speed_up": nchw / last})
            print(f"{name} {height}×{width} b{batch}: {nchw:.1f} → {last:.1f} ms/img ({nchw / last:.2f}×)",
                  flush=True)
    return rows


def markdown(rows: list[dict], environment: dict) -> str:
    lines = ["| backbone | size (h × w) | batch | NCHW ms/img | channels-last ms/img | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['backbone']} | {row['height']} × {row['width']} | {row['batch']} | "
              f"{row['nchw_ms_per_image']:.1f} | {row['channels_last_ms_per_image']:.1f} | {row['speed_up']:.2f}× |"
              for row in rows]
    lines += ["", f"Measured {environment.get('date', '')} with torch {environment.get('torch', '')}, "
              f"{environment.get('cpu_threads', '')} CPU threads: the feature extractor's forward pass alone "
              "(layers at strides 8 and 16), random weights, median of the alternated repeats, each the time of "
              "one call after a warm-up call."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="*", default=list(backbones()))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "channels-last"))
    args = parser.parse_args()
    rows = [row for name in args.backbones for row in measure(name, args.repeats)]
    environment = environment_record()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"environment": environment, "results": rows}, indent=2))
    (out / "results.md").write_text(markdown(rows, environment))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
