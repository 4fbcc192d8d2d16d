"""Benchmark: fit + evaluate each method on each category, each run in its own process.

A fresh process per run (started with ``spawn``: nothing inherited from this one) makes its peak memory
(resident set; GPU peak allocation on CUDA) its own, not the sum of everything run before. Results go to
``results.json`` and a Markdown table ``results.md``.

A method may be given with settings of its own, ``METHOD:NAME=VALUE[,NAME=VALUE…]`` (e.g. ``vae:scoring=residual``),
so that one bench compares variants of a method; each row is labelled with its variant (the value of the
method's `variant_param`, e.g. "vae (residual)") and with those settings.
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
from .model.base import AnomalyModel
from .registry import get_method

_COLUMNS = (("label", "method"), ("category", "category"), ("backbone", "backbone"),
            ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
            ("fit_seconds", "fit s"), ("total_seconds", "fit+eval s"), ("predict_ms_per_image", "ms/img b1"),
            ("predict_ms_per_image_batch16", "ms/img b16"), ("peak_memory_mib", "peak MiB"), ("device", "device"))


def parse_settings(settings: Sequence[str], category: str, method: str = "") -> dict[str, str]:
    """This run's overrides: `NAME=VALUE` for every run; `SCOPE:NAME=VALUE` for the runs of one category or one
    method; `SCOPE:SCOPE:NAME=VALUE` for the runs matching both (e.g. magnetic_tile:vae:epochs=10)."""
    chosen: dict[str, str] = {}
    for setting in settings:
        if "=" not in setting:
            raise ParameterError(f"setting {setting!r} is not NAME=VALUE or CATEGORY:NAME=VALUE")
        key, value = setting.split("=", 1)
        *scopes, key = key.split(":")
        if all(scope in (category, method) for scope in scopes):
            chosen[key] = value
    return chosen


def parse_method_spec(spec: str) -> tuple[str, dict[str, str]]:
    """"vae:scoring=residual,epochs=100" → ("vae", {"scoring": "residual", "epochs": "100"}); the method exists."""
    name, _, rest = spec.partition(":")
    get_method(name)
    settings = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ParameterError(f"method {spec!r}: {item!r} is not NAME=VALUE")
        key, value = item.split("=", 1)
        settings[key] = value
    return name, settings


def run_label(model: AnomalyModel, own_settings: dict[str, str]) -> str:
    """The row's name: the method, its variant, and the settings given to this run alone, e.g.
    "vae (projection, epochs=300)"."""
    parts = [str(model.params[model.variant_param])] if model.variant_param else []
    parts += [f"{key}={value}" for key, value in own_settings.items() if key != model.variant_param]
    return f"{model.name} ({', '.join(parts)})" if parts else model.name


def _find_root(data_roots: Sequence[str], category: str) -> str:
    for root in data_roots:
        if Path(root, category).is_dir() and category in list_categories(root):
            return root
    raise ParameterError(f"category {category!r} not found under {list(data_roots)}")


def bench_one(method: str, data_root: str, category: str, params: dict[str, Any],
              own_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit, evaluate and measure one method on one category (in the current process); `own_settings` are the
    settings given to this method alone (they name the row)."""
    from .pipeline import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(method, params, data_root, category)
    total_seconds = time.perf_counter() - started
    model = result.model
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    row = {"method": method, "label": run_label(model, own_settings or {}), "category": category,
           "backbone": model.params.get("backbone", "-"),
           "params": model.params, "preprocessing": model.preprocessing.to_dict(),
           "fit_seconds": round(model.info.fit_seconds, 2), "total_seconds": round(total_seconds, 2),
           "peak_memory_mib": round(peak_mib, 1),
           "n_fit_images": model.info.n_fit_images, "n_heldout_images": model.info.n_heldout_images,
           **result.metrics}
    if model.device.type == "cuda":
        row["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
    return row


def bench_in_fresh_process(method: str, data_root: str, category: str, params: dict[str, Any],
                           own_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """`bench_one` in a new process of its own (errors come back as raised in it)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(bench_one, method, data_root, category, params, own_settings).result()


def run_bench(methods: Sequence[str], data_roots: Sequence[str], categories: Sequence[str], out: Path,
              settings: Sequence[str] = (), device: str | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    specs = [parse_method_spec(spec) for spec in methods]  # unknown methods fail before any run
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for category in categories:
        root = _find_root(data_roots, category)
        for method, own_settings in specs:
            params = {**parse_settings(settings, category, method), **own_settings}
            if device:
                params["device"] = device
            if not quiet:
                given = "".join(f" {key}={value}" for key, value in own_settings.items())
                print(f"bench: {method}{given} on {category} …", file=sys.stderr, flush=True)
            results.append(bench_in_fresh_process(method, root, category, params, own_settings))
            _write_results(out, results)  # after every run: a long bench that fails late keeps what it measured
            if not quiet:
                row = results[-1]
                print(f"  image {row['image_auroc']:.4f} pixel {row['pixel_auroc']:.4f} aupro {row['aupro']:.4f} "
                      f"fit {row['fit_seconds']:.1f}s total {row['total_seconds']:.1f}s "
                      f"predict {row['predict_ms_per_image']:.1f} / {row['predict_ms_per_image_batch16']:.1f} "
                      f"ms/img (batch 1 / 16) peak {row['peak_memory_mib']:.0f}MiB", file=sys.stderr, flush=True)
    _write_results(out, results)
    return results


def _write_results(out: Path, results: list[dict[str, Any]]) -> None:
    environment = {"inspection": __version__, "torch": torch.__version__, "python": platform.python_version(),
                   "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
                   "date": time.strftime("%Y-%m-%d")}
    (out / "results.json").write_text(json.dumps({"environment": environment, "results": results}, indent=2))
    (out / "results.md").write_text(markdown_table(results, environment))


def markdown_table(results: Sequence[dict[str, Any]], environment: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |",
             "|" + "---|" * len(_COLUMNS)]
    for row in results:
        cells = []
        for key, _ in _COLUMNS:
            value = row.get(key, row["method"] if key == "label" else "")
            if value == "":
                cells.append("")
            elif key in {"image_auroc", "pixel_auroc", "aupro"}:
                cells.append(f"{value:.4f}")
            elif key in {"fit_seconds", "total_seconds", "predict_ms_per_image", "predict_ms_per_image_batch16"}:
                cells.append(f"{value:.1f}")
            elif key == "peak_memory_mib":
                cells.append(f"{value:.0f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Measured {environment['date']} with inspection {environment['inspection']}, torch "
             f"{environment['torch']}, {environment['cpu_threads']} CPU threads ({environment['machine']}).",
             "fit+eval s: the whole run (fit, calibration, evaluation on the test split, timing). ms/img b1 / b16: "
             "median time per preprocessed image at batch size 1 / in batches of 16, after warm-up, map at input "
             "resolution included, decoding excluded. peak MiB: the run's own process (fit + evaluation).",
             "Preprocessing per category: " + "; ".join(
                 f"{category}: {text}" for category, text in _preprocessing_by_category(results).items())]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def _preprocessing_by_category(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each category's preprocessing; when methods differ (e.g. a network trained at 128 px), each one named."""
    described: dict[str, dict[str, list[str]]] = {}
    for row in results:
        text = describe_preprocessing(row["preprocessing"])
        described.setdefault(row["category"], {}).setdefault(text, []).append(row.get("label", row["method"]))
    return {category: next(iter(texts)) if len(texts) == 1 else
            ", ".join(f"{text} ({', '.join(labels)})" for text, labels in texts.items())
            for category, texts in described.items()}


def describe_preprocessing(preprocessing: dict[str, Any]) -> str:
    """e.g. "centre crop 256→224" or "full frame 224×224, intensity standardised"."""
    if preprocessing["mode"] == "full":
        text = f"full frame {preprocessing['crop']}×{preprocessing['crop']}"
    else:
        text = f"centre crop {preprocessing['resize']}→{preprocessing['crop']}"
    if preprocessing.get("intensity", "none") != "none":
        text += f", intensity {preprocessing['intensity']}"
    return text
