"""Benchmark: fit + evaluate each method on each category, each run in its own process.

A fresh process per run (started with ``spawn``: nothing inherited from this one) makes its peak memory
(resident set; GPU peak allocation on CUDA) its own, not the sum of everything run before. Results go to
``results.json`` and a Markdown table ``results.md``.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data.datasets import list_categories
from .errors import ParameterError

_COLUMNS = (("method", "method"), ("category", "category"), ("backbone", "backbone"),
            ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
            ("fit_seconds", "fit s"), ("predict_ms_per_image", "predict ms/img"),
            ("peak_memory_mib", "peak MiB"), ("device", "device"))


def parse_settings(settings: Sequence[str], category: str) -> dict[str, str]:
    """`NAME=VALUE` for every run and `CATEGORY:NAME=VALUE` for one category → this category's overrides."""
    chosen: dict[str, str] = {}
    for setting in settings:
        if "=" not in setting:
            raise ParameterError(f"setting {setting!r} is not NAME=VALUE or CATEGORY:NAME=VALUE")
        key, value = setting.split("=", 1)
        if ":" in key:
            scope, key = key.split(":", 1)
            if scope != category:
                continue
        chosen[key] = value
    return chosen


def _find_root(data_roots: Sequence[str], category: str) -> str:
    for root in data_roots:
        if Path(root, category).is_dir() and category in list_categories(root):
            return root
    raise ParameterError(f"category {category!r} not found under {list(data_roots)}")


def bench_one(method: str, data_root: str, category: str, params: dict[str, Any]) -> dict[str, Any]:
    """Fit, evaluate and measure one method on one category (in the current process)."""
    from .pipeline import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(method, params, data_root, category)
    model = result.model
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    row = {"method": method, "category": category, "backbone": model.params.get("backbone", "-"),
           "params": model.params, "preprocessing": model.preprocessing.to_dict(),
           "fit_seconds": round(model.info.fit_seconds, 2), "peak_memory_mib": round(peak_mib, 1),
           "n_fit_images": model.info.n_fit_images, "n_heldout_images": model.info.n_heldout_images,
           **result.metrics}
    if model.device.type == "cuda":
        row["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
    return row


def bench_in_fresh_process(method: str, data_root: str, category: str, params: dict[str, Any]) -> dict[str, Any]:
    """`bench_one` in a new process of its own (errors come back as raised in it)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(bench_one, method, data_root, category, params).result()


def run_bench(methods: Sequence[str], data_roots: Sequence[str], categories: Sequence[str], out: Path,
              settings: Sequence[str] = (), device: str | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for category in categories:
        root = _find_root(data_roots, category)
        for method in methods:
            params = parse_settings(settings, category)
            if device:
                params["device"] = device
            if not quiet:
                print(f"bench: {method} on {category} …", file=sys.stderr, flush=True)
            results.append(bench_in_fresh_process(method, root, category, params))
            if not quiet:
                row = results[-1]
                print(f"  image {row['image_auroc']:.4f} pixel {row['pixel_auroc']:.4f} aupro {row['aupro']:.4f} "
                      f"fit {row['fit_seconds']:.1f}s predict {row['predict_ms_per_image']:.1f}ms "
                      f"peak {row['peak_memory_mib']:.0f}MiB", file=sys.stderr, flush=True)
    environment = {"inspection": __version__, "torch": torch.__version__, "python": platform.python_version(),
                   "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
                   "date": time.strftime("%Y-%m-%d")}
    (out / "results.json").write_text(json.dumps({"environment": environment, "results": results}, indent=2))
    (out / "results.md").write_text(markdown_table(results, environment))
    return results


def markdown_table(results: Sequence[dict[str, Any]], environment: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |",
             "|" + "---|" * len(_COLUMNS)]
    for row in results:
        cells = []
        for key, _ in _COLUMNS:
            value = row.get(key, "")
            if key in {"image_auroc", "pixel_auroc", "aupro"}:
                cells.append(f"{value:.4f}")
            elif key in {"fit_seconds", "predict_ms_per_image"}:
                cells.append(f"{value:.1f}")
            elif key == "peak_memory_mib":
                cells.append(f"{value:.0f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    preprocessing = {f"{row['category']}": row["preprocessing"] for row in results}
    notes = [f"Measured {environment['date']} with inspection {environment['inspection']}, torch "
             f"{environment['torch']}, {environment['cpu_threads']} CPU threads ({environment['machine']}).",
             "predict ms/img: median of one preprocessed image at batch 1 after warm-up, map at input resolution "
             "included, decoding excluded. peak MiB: the run's own process (fit + evaluation).",
             "Preprocessing per category: " + "; ".join(
                 f"{category}: {describe_preprocessing(p)}" for category, p in preprocessing.items())]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def describe_preprocessing(preprocessing: dict[str, Any]) -> str:
    """e.g. "centre crop 256→224" or "full frame 224×224, intensity standardised"."""
    if preprocessing["mode"] == "full":
        text = f"full frame {preprocessing['crop']}×{preprocessing['crop']}"
    else:
        text = f"centre crop {preprocessing['resize']}→{preprocessing['crop']}"
    if preprocessing.get("intensity", "none") != "none":
        text += f", intensity {preprocessing['intensity']}"
    return text
