"""Benchmark: fit + evaluate each method on each category, each run in its own process.

A fresh process per run (started with ``spawn``: nothing inherited from this one) makes its peak memory
(resident set; GPU peak allocation on CUDA) its own, not the sum of everything run before. Results go to
``results.json`` and a Markdown table ``results.md``.

A method may be given with settings of its own, ``METHOD:NAME=VALUE[,NAME=VALUE…]`` (e.g. ``vae:scoring=residual``),
so that one bench compares variants of a method; each row is labelled with its variant (the value of the
method's `capabilities.variant_param`, e.g. "vae (residual)") and with those settings.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import __version__
from ..data.datasets import list_categories
from ..data.protocol import ALIGNED, AlignmentProtocol
from ..device import configure_threads, thread_settings, under_load
from ..errors import ParameterError
from ..model.base import AnomalyModel
from ..registry import get_method
from .sweep import expand_grid, write_sweep

_COLUMNS = (("label", "method"), ("category", "category"), ("backbone", "backbone"),
            ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"),
            ("region_recall", "regions found"), ("false_boxes_per_good_image", "false boxes / good"),
            ("mask_iou", "mask IoU"),
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
    """"vae:scoring=residual,epochs=100" → ("vae", {"scoring": "residual", "epochs": "100"}); the method exists.
    A value may hold commas itself: "patchcore:layers=8,16,32,sigma=16" sets layers to "8,16,32"."""
    name, _, rest = spec.partition(":")
    get_method(name)
    settings: dict[str, str] = {}
    key = None
    for item in filter(None, rest.split(",")):
        if "=" in item:
            key, value = item.split("=", 1)
            settings[key] = value
        elif key is not None:  # the previous value goes on
            settings[key] += f",{item}"
        else:
            raise ParameterError(f"method {spec!r}: {item!r} is not NAME=VALUE")
    return name, settings


def run_label(model: AnomalyModel, own_settings: dict[str, str]) -> str:
    """The row's name: the method, its variant, and the settings given to this run alone, e.g.
    "vae (projection, epochs=300)"."""
    variant = model.capabilities.variant_param
    parts = [str(getattr(model, variant))] if variant else []
    parts += [f"{key}={value}" for key, value in own_settings.items() if key != variant]
    return f"{model.name} ({', '.join(parts)})" if parts else model.name


def find_root(data_roots: Sequence[str], category: str) -> str:
    for root in data_roots:
        if Path(root, category).is_dir() and category in list_categories(root):
            return root
    raise ParameterError(f"category {category!r} not found under {list(data_roots)}")


def bench_one(method: str, data_root: str, category: str, params: dict[str, Any],
              own_settings: dict[str, str] | None = None, save_to: str | None = None,
              protocol: AlignmentProtocol = ALIGNED, runtime: str = "torch") -> dict[str, Any]:
    """Fit, evaluate and measure one method on one category (in the current process) under `protocol`; save it
    when asked. `own_settings` are the settings given to this method alone (they name the row). With `runtime`
    onnx or openvino, the accuracy and speed are the model's export's on that runtime (`runtime_metrics`), the
    torch model's beside them."""
    from ..workflows.train import train

    configure_threads()
    before = thread_settings()  # the load when the run starts: timings taken under load say so
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(method, params, data_root, category, save_to, protocol=protocol)
    total_seconds = time.perf_counter() - started
    model = result.model
    peak_mib = peak_rss_mib()
    row = {"method": method, "label": run_label(model, own_settings or {}), "category": category,
           "backbone": getattr(model, "backbone", "-"),
           "params": model.get_params(), "preprocessing": model.preprocessing.to_dict(),
           "fit_seconds": round(model.info.fit_seconds, 2), "total_seconds": round(total_seconds, 2),
           "peak_memory_mib": round(peak_mib, 1),
           "n_fit_images": model.info.n_fit_images, "n_heldout_images": model.info.n_heldout_images,
           "learned_shapes": model.learned_shapes,
           **result.metrics, **before,
           "load_average_1min_after": thread_settings()["load_average_1min"]}
    if model.torch_device.type == "cuda":
        row["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(model.torch_device) / 2**20, 1)
    if runtime != "torch":
        from ..data.datasets import open_dataset

        exported = runtime_metrics(model, open_dataset(data_root, category), runtime)
        row.update({f"torch_{name}": row[name] for name in _RUNTIME_COMPARED}, **exported)
        row["label"] = f"{row['label']} on {runtime}"
    return row


#: The torch model's figures a runtime's row keeps beside its own (as torch_NAME).
_RUNTIME_COMPARED = ("image_auroc", "pixel_auroc", "aupro", "predict_ms_per_image", "predict_ms_per_image_batch16")
RUNTIME_BATCH = 16


def runtime_metrics(model: AnomalyModel, dataset: Any, runtime: str, repeats: int = 20) -> dict[str, Any]:
    """The model exported and scored on `runtime` (onnx, openvino): the test split's metrics through the export,
    and predict's median ms per image at batch 1 and 16 on decoded test images (as `evaluate` times torch)."""
    import statistics

    from ..export.exporting import export_model, sizes_of
    from ..model.batching import decode
    from ..runtime import load_export
    from ..workflows.evaluate import evaluate

    files = [sample.path for sample in dataset.test]
    folder = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        export_model(model, folder / "export", (runtime,), sizes_of(files) if model.preprocessing.mode == "aspect"
                     else ())
        scorer = load_export(folder / "export", runtime)
        metrics = dict(evaluate(scorer, dataset, timing_repeats=0).metrics)
        images = [decode(file) for file in files[:max(repeats, RUNTIME_BATCH)]]
        same_size = [image for image in images if image.shape == images[0].shape]
        batch = [same_size[index % len(same_size)] for index in range(RUNTIME_BATCH)]

        def median_ms(call: Callable[[], Any], times: int) -> float:
            call()  # warm-up
            spent = []
            for _ in range(times):
                started = time.perf_counter()
                call()
                spent.append((time.perf_counter() - started) * 1000)
            return statistics.median(spent)

        metrics["predict_ms_per_image"] = statistics.median(
            [median_ms(lambda image=image: scorer.predict([image]), 1) for image in images[:repeats]])
        metrics[f"predict_ms_per_image_batch{RUNTIME_BATCH}"] = median_ms(lambda: scorer.predict(batch),
                                                                           3) / RUNTIME_BATCH
        metrics["runtime"] = runtime
        return metrics
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB.

    Linux's VmHWM, not getrusage's ru_maxrss: a process started by fork + exec inherits its parent's ru_maxrss,
    which would count the bench's own memory in every run.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; elsewhere a best effort


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a new process of its own (errors come back as raised in it)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def predict_peak_rss(model_path: str, image_path: str, out: str) -> float:
    """Peak resident memory (MiB) of this process after scoring one image file the way `predict` does."""
    from ..registry import load_model
    from ..workflows.batch import score_files

    summary = score_files(load_model(model_path), [(Path(image_path), image_path)], Path(out), batch_size=1)
    if summary.scored != 1:
        raise RuntimeError(f"predict of {image_path} failed (see {summary.csv_path})")
    return peak_rss_mib()


def write_test_image(path: Path, side: int) -> Path:
    """A side×side grayscale PNG of smooth stripes (a stand-in for a line camera's frame)."""
    rows, columns = np.ogrid[0:side, 0:side]
    cv2.imwrite(str(path), (np.sin(columns / 50.0) * 60 + np.cos(rows / 70.0) * 60 + 128).astype(np.uint8))
    return path


def large_image_memory(model_path: Path, side: int, scratch: Path) -> dict[str, Any]:
    """Peak RSS of `predict` on one side×side grayscale PNG, and on a small one for comparison (fresh processes)."""
    large, small = write_test_image(scratch / f"gray_{side}.png", side), write_test_image(scratch / "gray_256.png", 256)
    return {"side": side, "megapixels": round(side * side / 1e6, 1),
            "peak_rss_mib": round(in_fresh_process(predict_peak_rss, str(model_path), str(large),
                                                   str(scratch / "out-large")), 1),
            "peak_rss_small_mib": round(in_fresh_process(predict_peak_rss, str(model_path), str(small),
                                                         str(scratch / "out-small")), 1)}


def write_folder_images(folder: Path, count: int, side: int, demo_root: Path) -> Path:
    """`count` side×side JPEG images (a production line's folder) made from the demo dataset's test images, each
    resized, and mirrored on every other pass so that no two files are alike."""
    sources = sorted(demo_root.glob("test/*/*.png"))
    if not sources:
        raise ParameterError(f"no test images under {demo_root}")
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = cv2.resize(cv2.imread(str(sources[index % len(sources)])), (side, side), interpolation=cv2.INTER_LINEAR)
        if (index // len(sources)) % 2:
            image = np.ascontiguousarray(image[:, ::-1])
        cv2.imwrite(str(folder / f"part_{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def predict_folder_run(model_path: str, folder: str, out: str) -> dict[str, Any]:
    """`predict --report` of a folder in this process — the same calls as the command line's, in the same order:
    seconds, images in the CSV, peak resident memory (VmHWM) of the whole process."""
    from ..registry import load_model
    from ..workflows.batch import collect_inputs, score_files
    from ..workflows.report import write_report

    configure_threads()
    started = time.perf_counter()
    model = load_model(model_path)
    summary = score_files(model, collect_inputs([folder]), Path(out), batch_size=16)
    report = write_report(model, summary, model_name=Path(model_path).name, inputs=[folder], batch_size=16)
    seconds = time.perf_counter() - started
    if summary.scored != len(summary.rows):
        raise RuntimeError(f"predict of {folder}: {summary.failed} image(s) could not be read")
    return {"seconds": round(seconds, 1), "images": len(summary.rows), "skipped": summary.skipped,
            "peak_rss_mib": round(peak_rss_mib(), 1), "report_kib": round(report.path.stat().st_size / 1024, 1),
            **thread_settings()}


def folder_memory(model_path: Path, count: int, side: int, demo_root: Path, scratch: Path) -> dict[str, Any]:
    """Peak RSS of `predict --report` over a folder of `count` side×side images, each run in a fresh process: the
    first run, the same command again (every image skipped) and, for comparison, a folder a tenth as large."""
    few = max(1, count // 10)
    large = write_folder_images(scratch / "images", count, side, demo_root)
    small = write_folder_images(scratch / "images-few", few, side, demo_root)
    return {"images": count, "side": side,
            "first": in_fresh_process(predict_folder_run, str(model_path), str(large), str(scratch / "out")),
            "again": in_fresh_process(predict_folder_run, str(model_path), str(large), str(scratch / "out")),
            "few": in_fresh_process(predict_folder_run, str(model_path), str(small), str(scratch / "out-few"))}


def folder_memory_markdown(result: dict[str, Any], environment: dict[str, Any]) -> str:
    """The folder measurement as a Markdown table and the conditions it was measured under."""
    lines = ["| run | images | seconds | peak RSS MiB | report KiB |", "|---|---|---|---|---|"]
    for key, label in (("first", "first run"), ("again", "the same command again (every image skipped)"),
                       ("few", "a folder a tenth as large")):
        run = result[key]
        lines.append(f"| {label} | {run['images']} | {run['seconds']:.1f} | {run['peak_rss_mib']:.0f} | "
                     f"{run['report_kib']:.0f} |")
    first = result["first"]
    return "\n".join(lines) + (
        f"\n\n`predict --report` over {result['images']} generated {result['side']}×{result['side']} JPEG images "
        f"with {result['model']}, batch size 16, every overlay written; each run in a fresh process (seconds: the "
        f"whole command, model loading and report included), peak RSS = its VmHWM. Measured {environment['date']} "
        f"with inspection {environment['inspection']}, torch "
        f"{environment['torch']}, {first['torch_threads']} torch threads ({environment['machine']}), load average "
        f"{first['load_average_1min']:.1f} on {first['cores_available']} cores as the first run ended.\n")


def run_bench(methods: Sequence[str], data_roots: Sequence[str], categories: Sequence[str], out: Path,
              settings: Sequence[str] = (), device: str | None = None, quiet: bool = False,
              large_image: int | None = None, protocol: AlignmentProtocol = ALIGNED,
              backbones: Sequence[str] = (), sides: Sequence[int] = (), runtime: str = "torch"
              ) -> list[dict[str, Any]]:
    """Every method (spec) on every category, each in a fresh process; results are written after every run.
    Under `protocol` every run's train and test images are moved by it. With `large_image`, also the peak memory
    of scoring one large_image×large_image grayscale PNG with the first of those models. With `backbones` and/or
    `sides`, a sweep: every spec at every backbone × input side (`inspection.bench.sweep`), also written as sweep.md
    and sweep.png. With `runtime` onnx or openvino, each model is exported and measured on that runtime too
    (`bench_one`)."""
    if runtime != "torch" and not protocol.aligned:
        raise ParameterError("--runtime measures exported models on the test split as captured: not with --protocol")
    specs = [parse_method_spec(spec) for spec in methods]  # unknown methods fail before any run
    # Every run's settings and data are checked before the first run starts, or anything is written.
    runs = []
    for category in categories:
        root = find_root(data_roots, category)
        for method, spec_settings in specs:
            shared = {**parse_settings(settings, category, method), **({"device": device} if device else {})}
            resolved = get_method(method).param_set().resolve({**shared, **spec_settings})
            for own_settings, label_settings in expand_grid(spec_settings, resolved["resize_mode"], backbones, sides,
                                                            resolved["resize"]):
                params = {**shared, **own_settings}
                get_method(method).param_set().resolve(params)
                runs.append((method, root, category, params, label_settings))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    first_model = scratch / "first.safetensors"
    results: list[dict[str, Any]] = []
    try:
        for method, root, category, params, own_settings in runs:
            if not quiet:
                given = "".join(f" {key}={value}" for key, value in own_settings.items())
                print(f"bench: {method}{given} on {category} …", file=sys.stderr, flush=True)
            save_to = str(first_model) if large_image and not results else None
            row = in_fresh_process(bench_one, method, root, category, params, own_settings, save_to, protocol,
                                   runtime)
            if "side" in own_settings:
                row["side"] = int(own_settings["side"])
            results.append(row)
            _write_results(out, results)  # after every run: a long bench that fails late keeps what it measured
            if not quiet:
                print(f"  image {row['image_auroc']:.4f} pixel {row['pixel_auroc']:.4f} aupro {row['aupro']:.4f} "
                      f"fit {row['fit_seconds']:.1f}s total {row['total_seconds']:.1f}s "
                      f"predict {row['predict_ms_per_image']:.1f} / {row['predict_ms_per_image_batch16']:.1f} "
                      f"ms/img (batch 1 / 16) peak {row['peak_memory_mib']:.0f}MiB", file=sys.stderr, flush=True)
        large = None
        if large_image and results:
            if not quiet:
                print(f"bench: predict memory on a {large_image}×{large_image} image …", file=sys.stderr, flush=True)
            large = {"model": f"{results[0]['label']} / {results[0]['category']}",
                     **large_image_memory(first_model, large_image, scratch)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_results(out, results, large)
    return results


def environment_record() -> dict[str, Any]:
    """What a measurement was made with: versions, machine, threads, date."""
    return {"inspection": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def _write_results(out: Path, results: list[dict[str, Any]], large_image: dict[str, Any] | None = None) -> None:
    environment = environment_record()
    report: dict[str, Any] = {"environment": environment, "results": results}
    if large_image:
        report["large_image"] = large_image
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown_table(results, environment, large_image))
    write_sweep(out, results)


def markdown_table(results: Sequence[dict[str, Any]], environment: dict[str, Any],
                   large_image: dict[str, Any] | None = None) -> str:
    lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |",
             "|" + "---|" * len(_COLUMNS)]
    for row in results:
        cells = []
        for key, _ in _COLUMNS:
            value = row.get(key, row["method"] if key == "label" else "")
            if key in {"region_recall", "false_boxes_per_good_image", "mask_iou"}:
                cells.append(f"{value:.2f}" if isinstance(value, float) else "—")
            elif value == "":
                cells.append("")
            elif key in {"image_auroc", "pixel_auroc", "aupro"}:
                cells.append(f"{value:.4f}")
            elif key in {"fit_seconds", "total_seconds", "predict_ms_per_image", "predict_ms_per_image_batch16"}:
                cells.append(f"{value:.1f}")
            elif key == "peak_memory_mib":
                cells.append(f"{value:.0f}")
            elif key == "device":
                cells.append(str(value) + _load_warning(row))
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Measured {environment['date']} with inspection {environment['inspection']}, torch "
             f"{environment['torch']}, {environment['cpu_threads']} CPU threads ({environment['machine']}).",
             "fit+eval s: the whole run (fit, calibration, evaluation on the test split, timing). ms/img b1 / b16: "
             "median time per preprocessed image at batch size 1 / in batches of 16, after warm-up, map at input "
             "resolution included, decoding excluded. peak MiB: the run's own process (fit + evaluation), its peak "
             "resident memory (VmHWM). Each run records its threads, wait policy and the machine's load average; a "
             "run that started or ended with a load above its cores is marked ⚠.",
             "Preprocessing per category: " + "; ".join(
                 f"{category}: {text}" for category, text in _preprocessing_by_category(results).items())]
    protocols = {AlignmentProtocol.from_dict(row["protocol"]) for row in results if row.get("protocol")}
    notes += [f"Protocol: {protocol.describe()}." for protocol in sorted(protocols, key=lambda item: item.seed)]
    if large_image:
        notes.append(f"Large image: `predict` of one {large_image['side']}×{large_image['side']} grayscale PNG "
                     f"({large_image['megapixels']} Mpx) with {large_image['model']}: peak RSS "
                     f"{large_image['peak_rss_mib']:.0f} MiB (a 256×256 one: {large_image['peak_rss_small_mib']:.0f} "
                     "MiB), whole process.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + promise_table(results) + by_type_table(results)


def by_type_table(results: Sequence[dict[str, Any]]) -> str:
    """Image / pixel AUROC and AUPRO per defect type (its images and the good ones), per run."""
    rows = [row for row in results if row.get("by_type")]
    if not rows:
        return ""
    lines = ["", "Per defect type: that type's test images against the good ones (pixel metrics over the pixels of "
             "those images only):", "", "| method | category | defect type | images | image AUROC | pixel AUROC "
             "| AUPRO |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for defect_type, metrics in row["by_type"].items():
            cells = [f"{metrics[key]:.4f}" if key in metrics else "—"
                     for key in ("image_auroc", "pixel_auroc", "aupro")]
            lines.append(f"| {row.get('label', row['method'])} | {row['category']} | {defect_type} | "
                         f"{metrics['n_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def promise_table(results: Sequence[dict[str, Any]]) -> str:
    """Target image FPR vs the FPR measured on unseen good test images (95 % interval), per run and target."""
    rows = [row for row in results if row.get("fpr_unseen_good_by_target")]
    if not rows:
        return ""
    targets = [entry["target"] for entry in rows[0]["fpr_unseen_good_by_target"]]
    lines = ["", "Image FPR on good test images that neither fitting nor calibration saw, at the split-conformal "
             "threshold for each target (95 % Clopper-Pearson interval; the promise when the held-out images are "
             "too few for the target):", "",
             "| method | category | held-out good | unseen good | " + " | ".join(f"target {t:.0%}" for t in targets)
             + " |", "|" + "---|" * (4 + len(targets))]
    for row in rows:
        cells = []
        for entry in row["fpr_unseen_good_by_target"]:
            low, high = entry["ci"]
            weaker = f" (promise {entry['promised']:.1%})" if entry["promised"] > entry["target"] + 1e-12 else ""
            cells.append(f"{entry['fpr']:.1%} [{low:.1%}, {high:.1%}]{weaker}")
        lines.append(f"| {row.get('label', row['method'])} | {row['category']} | {row.get('n_heldout_images', '—')} | "
                     f"{row['n_unseen_good']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _load_warning(row: dict[str, Any]) -> str:
    if not under_load(row):
        return ""
    load = max(value for value in (row.get("load_average_1min"), row.get("load_average_1min_after")) if value)
    return f" ⚠ measured under load ({load:.1f} on {row['cores_available']} cores)"


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
    elif preprocessing["mode"] == "aspect":
        text = f"aspect kept, shorter side {preprocessing['resize']}"
    elif preprocessing["mode"] == "tiles":
        side = preprocessing["crop"]
        text = (f"tiles {side}×{side} (overlap {preprocessing.get('tile_overlap', 32)}) of the image at shorter side "
                f"{preprocessing['resize']}")
    else:
        text = f"centre crop {preprocessing['resize']}→{preprocessing['crop']}"
    if preprocessing.get("intensity", "none") != "none":
        text += f", intensity {preprocessing['intensity']}"
    return text
