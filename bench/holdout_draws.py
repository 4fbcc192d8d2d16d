"""How much does the saved image threshold depend on which good images were held out to set it?

A model is fitted once per setting; its scores of the test split's good and defect images are taken once. Then,
for each size n, many seeded draws of n of the test's good images play the held-out set: each draw gives the
split-conformal threshold at the target, the share of defect images above it, and the false-alarm rate on the
good images not drawn. With n below 2/α − 1 (19–38 at 5 %) that threshold is the single highest held-out score,
and the figures swing from draw to draw; this measures by how much.

    INSPECTION_SHARED=../shared python bench/holdout_draws.py [--sizes 23 39 55] [--draws 200] \\
        [--out bench/holdout-draws] patchcore patchcore:layers=16,32
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

from inspection import __version__
from inspection.bench.run import parse_method_spec, run_label
from inspection.data.datasets import open_dataset
from inspection.registry import create_model
from inspection.scores.thresholds import conformal_threshold


def draw_figures(good: np.ndarray, defect: np.ndarray, size: int, draws: int, target: float) -> dict:
    """Quartiles over `draws` seeded draws of `size` good scores as the held-out set."""
    flagged, false_alarms, highest = [], [], []
    for seed in range(draws):
        order = np.random.default_rng(seed).permutation(good.size)
        held, unseen = good[order[:size]], good[order[size:]]
        threshold = conformal_threshold(held, target)
        flagged.append(float((defect > threshold.threshold).mean()))
        false_alarms.append(float((unseen > threshold.threshold).mean()))
        highest.append(threshold.rank == size)

    def spread(values: list[float]) -> list[float]:
        return [round(float(value), 3) for value in np.quantile(values, (0.1, 0.5, 0.9))]

    return {"held_out": size, "draws": draws, "threshold_is_highest": bool(all(highest)),
            "defects_flagged_p10_p50_p90": spread(flagged), "unseen_good_fpr_p10_p50_p90": spread(false_alarms),
            "unseen_good_fpr_mean": round(float(np.mean(false_alarms)), 4)}


def run(specs: list[str], root: Path, category: str, sizes: list[int], draws: int, target: float) -> list[dict]:
    dataset = open_dataset(root, category)
    good = [sample.path for sample in dataset.test if sample.label == 0]
    defect = [sample.path for sample in dataset.test if sample.label == 1]
    rows = []
    for spec in specs:
        method, settings = parse_method_spec(spec)
        model = create_model(method, **settings)
        started = time.perf_counter()
        model.fit([sample.source for sample in dataset.train])
        good_scores, defect_scores = model.predict(good).raw_scores, model.predict(defect).raw_scores
        print(f"{spec}: fitted and scored in {time.perf_counter() - started:.0f} s", flush=True)
        for size in sizes:
            rows.append({"label": run_label(model, settings), "category": category,
                         **draw_figures(good_scores, defect_scores, size, draws, target)})
    return rows


def markdown(rows: list[dict], environment: dict) -> str:
    lines = ["| method | held-out good | threshold = highest held-out | defects flagged p10 / median / p90 | "
             "unseen-good FPR p10 / median / p90 | mean FPR |", "|---|---|---|---|---|---|"]
    for row in rows:
        flagged = " / ".join(f"{value:.2f}" for value in row["defects_flagged_p10_p50_p90"])
        fpr = " / ".join(f"{value:.1%}" for value in row["unseen_good_fpr_p10_p50_p90"])
        lines.append(f"| {row['label']} | {row['held_out']} | {'yes' if row['threshold_is_highest'] else 'no'} | "
                     f"{flagged} | {fpr} | {row['unseen_good_fpr_mean']:.1%} |")
    lines += ["", f"{environment['category']}: {environment['draws']} seeded draws of the test split's good images "
              f"as the held-out set per size, target {environment['target']:.0%}; the model's scores are taken once. "
              f"Measured {environment['date']} with inspection {environment['version']}, torch "
              f"{environment['torch']}, {environment['threads']} CPU threads."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", help="method specs, as bench --methods takes them")
    parser.add_argument("--data", default=str(Path(os.environ.get("INSPECTION_SHARED", "../shared")) / "data" / "ksdd"))
    parser.add_argument("--category", default="commutator")
    parser.add_argument("--sizes", type=int, nargs="+", default=[23, 39, 55])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--out", default="bench/holdout-draws")
    args = parser.parse_args()
    rows = run(args.methods, Path(args.data), args.category, args.sizes, args.draws, args.target)
    environment = {"date": datetime.now(timezone.utc).date().isoformat(), "version": __version__,
                   "torch": torch.__version__, "threads": torch.get_num_threads(), "category": args.category,
                   "draws": args.draws, "target": args.target, "load_average": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"environment": environment, "results": rows}, indent=1))
    (out / "results.md").write_text(markdown(rows, environment))
    print(markdown(rows, environment))


if __name__ == "__main__":
    main()
