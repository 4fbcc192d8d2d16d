"""What each runtime costs per image and whether it is exact: `predict` of a default PatchCore in torch, and of its
export on onnxruntime and OpenVINO, at batch 1 and 16, on MVTec AD bottle and KolektorSDD (one run, one machine:
compare as ratios).

    python bench/runtimes.py [--out bench/runtimes] [--images 32] [--work /tmp/inspection-runtimes]

The images are decoded once; each timed call is `predict` on all of them (preprocessing, scoring, familiarity
check), so ms/image includes what a line pays after the camera has delivered the frame. Exact = identical verdicts
on these images and maps within 1e-3 of their range.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch

from inspection import __version__
from inspection.data.datasets import open_dataset
from inspection.data.images import load_image
from inspection.export.exporting import export_model
from inspection.registry import create_model, load_model
from inspection.runtime import load_export

SETS = {"bottle": ("mvtec_ad", "bottle"), "ksdd": ("ksdd", "commutator")}
RUNTIMES = ("torch", "onnx", "openvino")


def interleaved_ms(calls: dict, repeats: int) -> dict:
    """The quartiles (25 %, median, 75 %) of the wall time in ms of each of `calls` (name → function), after one
    warm-up call each; the calls take
    turns in every repeat, so a drift of the machine's speed during the run (on this shared 2-core machine, 20 % from
    one minute to the next) weighs on all of them alike instead of on whichever ran last."""
    for call in calls.values():
        call()
    times: dict = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: np.percentile(values, [25, 50, 75]).tolist() for name, values in times.items()}


def spread_images(samples: list, count: int) -> list:
    """`count` test images spread over the split (good and defect alike), in a fixed order."""
    step = max(1, len(samples) // count)
    return samples[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/runtimes"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/inspection-runtimes"),
                        help="where the fitted models and exports are kept (reused on a rerun)")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("INSPECTION_SHARED", "../shared")))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.sets:
        folder, category = SETS[name]
        dataset = open_dataset(args.shared / "data" / folder, category)
        model_file = args.work / f"{name}-patchcore.safetensors"
        if not model_file.is_file():
            args.work.mkdir(parents=True, exist_ok=True)
            create_model("patchcore").fit([sample.path for sample in dataset.train]).save(model_file)
        samples = spread_images(dataset.test, args.images)
        images = [load_image(sample.path) for sample in samples]
        export = args.work / f"{name}-patchcore-export"
        model = load_model(model_file)
        export_model(model, export, ("onnx", "openvino"), sorted({image.shape[:2] for image in images}))
        scorers = {"torch": model, "onnx": load_export(export, "onnx"), "openvino": load_export(export, "openvino")}
        reference = model.predict(images)
        finite = np.isfinite(reference.raw_maps)
        spread = float(np.ptp(reference.raw_maps[finite]))
        for runtime in RUNTIMES:
            scorer = scorers[runtime]
            got = scorer.predict(images)
            map_gap = float(np.abs(got.raw_maps[finite] - reference.raw_maps[finite]).max())
            exact = bool(np.array_equal(got.verdicts, reference.verdicts)) and map_gap <= 1e-3 * spread
            medians = interleaved_ms({batch: partial(scorer.predict, images, batch_size=batch) for batch in (1, 16)},
                                     args.repeats)
            for batch, quartiles in medians.items():
                low, ms, high = (value / len(images) for value in quartiles)
                rows.append({"set": name, "runtime": runtime, "batch": batch, "ms_per_image": round(ms, 2),
                             "ms_per_image_quartiles": [round(low, 2), round(high, 2)],
                             "exact": exact, "max_map_difference": map_gap, "map_range": spread,
                             "images": len(images), "sizes": sorted({f"{w}x{h}" for h, w in
                                                                     (image.shape[:2] for image in images)})})
            print(rows[-2], rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    for row in rows:
        base = next(other for other in rows if other["set"] == row["set"] and other["runtime"] == "torch"
                    and other["batch"] == 1)
        row["vs_torch_batch_1"] = round(row["ms_per_image"] / base["ms_per_image"], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import openvino

    meta = {"date": f"{datetime.now(timezone.utc):%Y-%m-%d}", "inspection": __version__, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average_before": load_before,
            "load_average_after": load_after, "repeats": args.repeats}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    lines = ["| set | runtime | batch | ms / image [quartiles] | vs torch at batch 1 | exact (verdicts, map ≤ 1e-3 of "
             "range) |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['set']} | {row['runtime']} | {row['batch']} | {row['ms_per_image']:.1f} "
              f"[{row['ms_per_image_quartiles'][0]:.1f}, {row['ms_per_image_quartiles'][1]:.1f}] | "
              f"{row['vs_torch_batch_1']:.2f} | {'yes' if row['exact'] else 'no'} "
              f"({row['max_map_difference']:.1e} of {row['map_range']:.3g}) |" for row in rows]
    lines.append(f"\nMeasured {meta['date']} with inspection {__version__}, torch {meta['torch']} "
                 f"({meta['torch_threads']} threads), onnxruntime {meta['onnxruntime']}, OpenVINO {meta['openvino']}, "
                 f"{meta['cpus']} CPUs, load {load_before:.2f} before and {load_after:.2f} after; PatchCore at its "
                 f"defaults; `predict` on {rows[0]['images']} decoded test images per set (good and defect), median of "
                 f"{args.repeats} calls after a warm-up, batch 1 and 16 taking turns.\n")
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
