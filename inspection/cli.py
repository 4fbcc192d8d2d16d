"""Command line: ``python -m inspection {fit,evaluate,predict,bench,methods,demo} …``.

The command and option names are fixed so that scripts can rely on them. Method parameters come from the
registry's declarations, so a newly registered method's settings appear here with no edit.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
from tqdm import tqdm

from .base import AnomalyModel, Progress
from .data import DatasetError, open_dataset
from .images import ImageLoadError, list_images, load_image
from .modelfile import MODEL_SUFFIX, ModelFileError
from .registry import backbones, create_model, load_model, methods


class ProgressBars:
    """Turns Progress reports into one tqdm bar per stage (on stderr)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.stage = ""

    def __call__(self, report: Progress) -> None:
        if self.quiet:
            return
        if report.stage != self.stage or self.bar is None:
            self.close()
            self.stage = report.stage
            self.bar = tqdm(total=report.total, desc=report.stage, unit="step", leave=False, file=sys.stderr)
        self.bar.total = report.total
        self.bar.n = report.step
        if report.loss is not None:
            self.bar.set_postfix(loss=f"{report.loss:.4g}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _method_param_options(parser: argparse.ArgumentParser) -> None:
    """One --option per declared parameter of every registered method (validated by the chosen method)."""
    seen: set[str] = set()
    group = parser.add_argument_group("method parameters (see `python -m inspection methods`)")
    for method_cls in methods().values():
        for param in method_cls.param_set():
            if param.name in seen or param.name in {"backbone", "weights", "device"}:
                continue
            seen.add(param.name)
            group.add_argument(f"--{param.name.replace('_', '-')}", dest=f"param_{param.name}", default=None,
                               metavar=param.kind.__name__.upper(), help=param.help)


def _given_params(args: argparse.Namespace) -> dict[str, Any]:
    given = {key[len("param_"):]: value for key, value in vars(args).items()
             if key.startswith("param_") and value is not None}
    for name in ("backbone", "weights", "device"):
        if getattr(args, name, None) is not None:
            given[name] = getattr(args, name)
    return given


def _build_model(method: str, given: dict[str, Any]) -> AnomalyModel:
    method_cls = methods().get(method)
    if method_cls is None:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(methods())}")
    accepted = set(method_cls.param_set().names())
    not_applicable = sorted(set(given) - accepted)
    if not_applicable:
        raise ValueError(f"parameter(s) {not_applicable} do not apply to method {method!r}")
    return create_model(method, **given)


def command_fit(args: argparse.Namespace) -> int:
    from .evaluate import fit_on_dataset

    dataset = open_dataset(args.data, args.category)
    model = _build_model(args.method, _given_params(args))
    bars = ProgressBars(args.quiet)
    try:
        evaluation = fit_on_dataset(model, dataset, progress=bars, evaluate_test=not args.no_evaluate)
    finally:
        bars.close()
    out = Path(args.out)
    if out.suffix != MODEL_SUFFIX:
        out = out.with_name(out.name + MODEL_SUFFIX)
    model.save(out)
    print(f"saved {out}")
    print(f"fit: {model.info['fit_seconds']:.1f} s on {model.info['n_fit_images']} images; "
          f"calibrated on {model.info['n_heldout_images']} held-out good images "
          f"(image threshold {model.calibration.image_threshold:.4g}, pixel threshold "
          f"{model.calibration.pixel_threshold:.4g})")
    if evaluation is not None:
        print(json.dumps(_rounded(evaluation.metrics), indent=2))
    return 0


def command_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    model = load_model(args.model, device=args.device)
    dataset = open_dataset(args.data, args.category)
    bars = ProgressBars(args.quiet)
    try:
        evaluation = evaluate(model, dataset, progress=bars)
    finally:
        bars.close()
    result = {"model": str(args.model), "method": model.name, "category": dataset.category,
              **evaluation.metrics, "scores": evaluation.records}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    print(json.dumps(_rounded(evaluation.metrics), indent=2))
    return 0


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            if not found:
                print(f"warning: folder {path} holds no images", file=sys.stderr)
            files.extend(found)
        else:
            files.append(path)
    return files


def _unique_name(stem: str, used: set[str]) -> str:
    name, counter = stem, 1
    while name in used:
        counter += 1
        name = f"{stem}_{counter}"
    used.add(name)
    return name


def command_predict(args: argparse.Namespace) -> int:
    from .visualize import box_to_original, draw_boxes, overlay

    model = load_model(args.model, device=args.device)
    calibration = model.calibration
    files = _collect_inputs(args.inputs)
    if not files:
        raise ValueError("no input images: give image files or folders holding images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for start in tqdm(range(0, len(files), args.batch_size), desc="predict", unit="batch", file=sys.stderr,
                      disable=args.quiet):
        decoded, chunk = [], files[start: start + args.batch_size]
        for path in chunk:
            try:
                decoded.append((path, load_image(path)))
            except ImageLoadError as error:  # one bad file is reported and skipped; the rest are scored
                rows.append({"file": str(path), "score": "", "raw_score": "", "verdict": "", "regions": "",
                             "error": str(error)})
        if not decoded:
            continue
        prediction = model.predict([image for _, image in decoded])
        verdicts = prediction.verdicts
        for index, (path, image) in enumerate(decoded):
            # Boxes only where the image is rejected: a good verdict's faint spots are not defects.
            regions = prediction.regions(index) if verdicts[index] else []
            name = _unique_name(path.stem, used)
            picture = overlay(image, prediction.map_on_original(index))
            boxes = [box_to_original(region, prediction.geometries[index]) for region in regions]
            picture = draw_boxes(picture, boxes, [f"{region.max_score:.2f}" for region in regions])
            cv2.imwrite(str(out / f"{name}.png"), picture[:, :, ::-1])  # OpenCV writes BGR
            rows.append({"file": str(path), "score": f"{prediction.image_scores[index]:.4f}",
                         "raw_score": f"{prediction.raw_scores[index]:.6g}",
                         "verdict": "defect" if verdicts[index] else "good", "regions": len(regions), "error": ""})
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "score", "raw_score", "verdict", "regions", "error"])
        writer.writeheader()
        writer.writerows(rows)
    flagged = sum(row["verdict"] == "defect" for row in rows)
    failed = sum(bool(row["error"]) for row in rows)
    print(f"scored {len(rows) - failed} image(s): {flagged} defect(s) at threshold "
          f"{calibration.normalized_image_threshold:.3f} (normalised); {failed} unreadable; "
          f"wrote {out / 'predictions.csv'} and overlays")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(methods=args.methods, data_roots=args.data, categories=args.categories, out=Path(args.out),
              settings=args.set or [], device=args.device, quiet=args.quiet)
    return 0


def command_bench_one(args: argparse.Namespace) -> int:
    from .bench import bench_one

    result = bench_one(args.method, args.data, args.category, json.loads(args.params), quiet=args.quiet)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def command_methods(args: argparse.Namespace) -> int:
    described = {name: {"description": cls.description,
                        "params": [param.describe() for param in cls.param_set()]}
                 for name, cls in methods().items()}
    if args.json:
        print(json.dumps({"methods": described, "backbones": {
            name: {"description": spec.description, "layers": {layer: vars(info) for layer, info in spec.layers.items()}}
            for name, spec in backbones().items()}}, indent=2))
        return 0
    for name, entry in described.items():
        print(f"{name}: {entry['description']}")
        for param in entry["params"]:
            allowed = f" one of {list(param['choices'])}" if param["choices"] else ""
            print(f"  --{param['name'].replace('_', '-')} ({param['kind']}, default {param['default']!r}){allowed}: "
                  f"{param['help']}")
    print("backbones: " + ", ".join(backbones()))
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from .demo import demo_dataset, generate_demo_dataset

    print(generate_demo_dataset(args.out) if args.out else demo_dataset())
    return 0


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inspection",
                                     description="Visual inspection by anomaly detection: train on good images, "
                                                 "score new ones.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="fit a method on a category's good images, evaluate, save one model file")
    fit.add_argument("--method", required=True, choices=sorted(methods()))
    fit.add_argument("--data", required=True, help="dataset root (MVTec layout) or a folder with good/ and defect/")
    fit.add_argument("--category", default=None, help="category folder under --data (MVTec layout)")
    fit.add_argument("--backbone", default=None, choices=sorted(backbones()))
    fit.add_argument("--weights", default=None, help="backbone weights file (default: found automatically)")
    fit.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    fit.add_argument("--out", required=True, help=f"model file to write ({MODEL_SUFFIX})")
    fit.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on the test split")
    _method_param_options(fit)
    fit.set_defaults(handler=command_fit)

    evaluate = commands.add_parser("evaluate", help="metrics and speed of a model on a test split")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--category", default=None)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--json", default=None, help="write the metrics and per-image scores here")
    evaluate.set_defaults(handler=command_evaluate)

    predict = commands.add_parser("predict", help="score image files or folders: CSV + heatmap overlays")
    predict.add_argument("--model", required=True)
    predict.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    predict.add_argument("--out", required=True, help="output folder")
    predict.add_argument("--device", default=None)
    predict.add_argument("--batch-size", type=int, default=16)
    predict.set_defaults(handler=command_predict)

    bench = commands.add_parser("bench", help="fit + evaluate each method on each category; results.json/.md")
    bench.add_argument("--methods", nargs="+", required=True, choices=sorted(methods()))
    bench.add_argument("--data", nargs="+", required=True, help="dataset root(s); categories are looked up in each")
    bench.add_argument("--categories", nargs="+", required=True)
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--device", default=None)
    bench.add_argument("--set", nargs="*", metavar="[CATEGORY:]NAME=VALUE",
                       help="parameter overrides, for all runs or for one category (e.g. magnetic_tile:resize_mode=full)")
    bench.set_defaults(handler=command_bench)

    bench_one = commands.add_parser("bench-one", help=argparse.SUPPRESS)
    bench_one.add_argument("--method", required=True)
    bench_one.add_argument("--data", required=True)
    bench_one.add_argument("--category", required=True)
    bench_one.add_argument("--params", default="{}")
    bench_one.add_argument("--json", required=True)
    bench_one.set_defaults(handler=command_bench_one)

    listing = commands.add_parser("methods", help="list methods, their parameters, and backbones")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=command_methods)

    demo = commands.add_parser("demo", help="generate the built-in demo dataset and print its path")
    demo.add_argument("--out", default=None, help="root folder (default: the data cache)")
    demo.set_defaults(handler=command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, DatasetError, ModelFileError, ImageLoadError) as error:
        # Expected user errors: one clear line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2

