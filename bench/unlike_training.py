"""Does the "unlike the training data" check tell a picture of another part from the model's own?

For each method and each shared set a model is fitted on (its defaults, seed 0), the share of images the check
calls unlike the training data: of the model's own test images (good and defect: the check must leave them to the
anomaly score; with the 95 % interval, beside the rate the check promises on new good parts), and of the test
images of every other shared set and the demo (which it must catch). Also a 16-bit grey gradient.

    INSPECTION_SHARED=../shared python bench/unlike_training.py [--per-set 100] [--out bench/unlike-training]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inspection import __version__
from inspection.data.datasets import open_dataset
from inspection.data.demo import demo_dataset
from inspection.registry import create_model
from inspection.scores.thresholds import clopper_pearson

METHODS = ("patchcore", "padim", "dfr")
MODEL_SETS = ("bottle", "ksdd")


def shared_sets() -> dict[str, Path]:
    """The category folders of the shared sets, and the demo's."""
    data = Path(os.environ.get("INSPECTION_SHARED", "../shared")) / "data"
    return {"bottle": data / "mvtec_ad" / "bottle", "ksdd": data / "ksdd" / "commutator",
            "magnetic_tile": data / "magnetic_tile" / "magnetic_tile", "demo": demo_dataset()}


def sample_test(root: Path, count: int, seed: int = 0) -> list[Path]:
    """Up to `count` test images of a set, drawn with a fixed seed."""
    paths = [sample.path for sample in open_dataset(root).test]
    return [paths[index] for index in sorted(np.random.default_rng(seed).permutation(len(paths))[:count])]


def gradient_png(folder: Path) -> Path:
    """A 16-bit grey gradient, 512 × 512: no part at all."""
    path = folder / "gradient16.png"
    ramp = np.tile(np.linspace(0, 65535, 512), (512, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    return path


def run(per_set: int, out: Path) -> list[dict]:
    sets = shared_sets()
    out.mkdir(parents=True, exist_ok=True)
    gradient = gradient_png(out)
    rows = []
    for method in METHODS:
        for name in MODEL_SETS:
            dataset = open_dataset(sets[name])
            model = create_model(method)
            started = time.perf_counter()
            model.fit([sample.path for sample in dataset.train])
            fit_seconds = time.perf_counter() - started
            own = model.predict([sample.path for sample in dataset.test])
            labels = np.array([sample.label for sample in dataset.test])
            unlike = own.unlike_training
            row = {"method": method, "model_set": name, "threshold": model.familiarity.threshold,
                   "promised_rate": model.familiarity.promised_fpr,
                   "n_heldout": len(model.familiarity.heldout_distances),
                   "own_test": float(unlike.mean()),
                   "own_test_ci": list(clopper_pearson(int(unlike.sum()), len(unlike))),
                   "own_good": float(unlike[labels == 0].mean()), "own_defect": float(unlike[labels == 1].mean()),
                   "n_own": len(unlike), "others": {}, "fit_seconds": round(fit_seconds, 1)}
            for other, root in sets.items():
                if other == name:
                    continue
                flagged = model.predict(sample_test(root, per_set)).unlike_training
                row["others"][other] = {"flagged": float(flagged.mean()), "n": len(flagged)}
            row["others"]["gradient16"] = {"flagged": float(model.predict([gradient]).unlike_training.mean()),
                                           "n": 1}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    others = sorted({other for row in rows for other in row["others"]})
    lines = ["| method | model of | promised rate | own test unlike [95 % CI] | own good | own defect | "
             + " | ".join(f"{other} unlike" for other in others) + " |",
             "|" + "---|" * (6 + len(others))]
    for row in rows:
        low, high = row["own_test_ci"]
        cells = [f"{row['others'][other]['flagged']:.2f} (n={row['others'][other]['n']})" if other in row["others"]
                 else "—" for other in others]
        lines.append(f"| {row['method']} | {row['model_set']} | {row['promised_rate']:.1%} | "
                     f"{row['own_test']:.1%} [{low:.1%}, {high:.1%}] (n={row['n_own']}) | {row['own_good']:.1%} | "
                     f"{row['own_defect']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nMeasured {datetime.now(timezone.utc):%Y-%m-%d} with inspection {__version__}, "
                               f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; each model at its "
                               "method's defaults, seed 0; other sets: up to the stated n test images each, drawn "
                               "with seed 0.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/unlike-training"))
    args = parser.parse_args()
    rows = run(args.per_set, args.out)
    (args.out / "results.json").write_text(json.dumps({"results": rows}, indent=1))
    (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
