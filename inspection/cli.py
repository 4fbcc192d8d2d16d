"""Command line: ``python -m inspection {fit,evaluate,predict,explain,classifier,recalibrate,teach,bench,methods,demo,
…} …`` (or ``inspection …``).

The command and option names are fixed so that scripts can rely on them. Every method parameter becomes an
option of `fit` from its declaration in the registry, so a new method's settings appear here with no edit:
``fit --method M --help`` lists M's own, with M's defaults. Each command's options are declared by a small
function beside its handler; only the commands that need the list of methods (fit, bench, methods) import them,
when that command is parsed. Errors a user can cause are printed in one place, as one line, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from tqdm import tqdm

from .data.datasets import open_dataset
from .data.protocol import PROTOCOLS, AlignmentProtocol
from .device import configure_threads
from .errors import ParameterError, run_command
from .export.scorers import RUNTIMES, load_scorer
from .model.common_params import COMMON_PARAMS
from .model.modelfile import MODEL_SUFFIX
from .model.operating import promise_report
from .outputs import check_output_file, check_output_folder
from .params import Param, ParamSet
from .progress import Progress
from .registry import backbones, get_method, load_model, methods
from .runtime import ENGINES
from .workflows.batch import OVERLAY_CHOICES
from .workflows.evaluate import round_metrics

#: The subparsers action every command is added to (`_add_fit(commands)` and so on).
Commands = Any
#: Completes a command's parser when it is parsed or its help shown: (the parser, the command's arguments).
Deferred = Callable[["_Parser", list[str]], None]


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
        if report.losses:
            self.bar.set_postfix({name: f"{value:.4g}" for name, value in report.losses.items()})
        elif report.loss is not None:
            self.bar.set_postfix(loss=f"{report.loss:.4g}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong command line is one line (and exit code 2) like every other user error; and a
    command's options that need the methods are added only when that command is parsed or its help shown."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deferred: list[Deferred] = []

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def defer(self, complete: Deferred) -> None:
        """Call `complete(parser, arguments)` before this parser first parses its arguments or shows its help."""
        self._deferred.append(complete)

    def _complete(self, arguments: Sequence[str]) -> None:
        while self._deferred:
            self._deferred.pop(0)(self, list(arguments))

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        # A command's parser is handed its own arguments here by the subparsers action.
        self._complete(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete([])
        return super().format_help()

    def format_usage(self) -> str:
        self._complete([])
        return super().format_usage()


class _Unparsable(Exception):
    """The pre-parse of `--method` failed: the real parse says why."""


class _MethodPeek(argparse.ArgumentParser):
    """Finds `--method` among a command's arguments before its options are built; ignores everything else."""

    def __init__(self) -> None:
        super().__init__(add_help=False)
        self.add_argument("--method", default=None)

    def error(self, message: str) -> NoReturn:
        raise _Unparsable(message)


def _chosen_method(arguments: Sequence[str]) -> str | None:
    """The registered method named by `--method` in `arguments`, or None (absent, unknown, or not parsable)."""
    try:
        chosen = _MethodPeek().parse_known_args(list(arguments))[0].method
    except _Unparsable:
        return None
    return chosen if chosen in methods() else None


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _described(param: Param) -> str:
    """A parameter's help with its choices, as --help shows it."""
    extra = f" One of: {', '.join(map(str, param.choices))}." if param.choices else ""
    return f"{param.help}{extra}"


def _escaped(text: str) -> str:
    """`text` as an argparse help string (which is %-formatted)."""
    return text.replace("%", "%%")


def _add_param_option(group: Any, param: Param) -> None:
    """One option for a declared parameter; values stay text here and are checked by the declaration."""
    group.add_argument(_option(param.name), dest=f"param_{param.name}", default=None,
                       metavar=param.kind.__name__.upper(),
                       help=_escaped(f"{_described(param)} (default: {param.default!r})"))


def _device(args: argparse.Namespace) -> str | None:
    """The --device of evaluate/predict, checked by the declaration of the common `device` parameter."""
    return None if args.param_device is None else COMMON_PARAMS.get("device").coerce(args.param_device)


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    _add_param_option(parser, COMMON_PARAMS.get("device"))


_PROTOCOL_SEED = Param("protocol_seed", int, 0, "Seed of the protocol's per-image moves.", minimum=0)


def _add_protocol_options(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--protocol and --protocol-seed (`default` None: the model's own)."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default=default,
                        help=f"aligned: images as captured; rotated: {what} each turned by a random angle in "
                             "(-10°, +10°) and cut as a random 224 crop of the 256 frame, masks alike "
                             f"(default: {default or 'the protocol the model was fitted under'})")
    seed_default = "0" if default else "the model's when it was fitted under the same protocol, else 0"
    parser.add_argument("--protocol-seed", default=None, metavar="INT",
                        help=f"seed of the per-image angles and crops (default: {seed_default})")


def _protocol_seed(args: argparse.Namespace) -> int | None:
    """The --protocol-seed given (checked), or None."""
    return None if args.protocol_seed is None else _PROTOCOL_SEED.coerce(args.protocol_seed)


def _protocol(args: argparse.Namespace, fitted: AlignmentProtocol | None = None) -> AlignmentProtocol:
    """The protocol asked for; what is not given comes from `fitted` (the model's) when there is one."""
    name = args.protocol or (fitted.name if fitted else "aligned")
    seed = _protocol_seed(args)
    if seed is None:
        seed = fitted.seed if fitted is not None and fitted.name == name else 0
    return AlignmentProtocol(name, seed)


# --- fit -------------------------------------------------------------------------------------------------------


def _given_params(args: argparse.Namespace) -> dict[str, Any]:
    return {key[len("param_"):]: value for key, value in vars(args).items()
            if key.startswith("param_") and value is not None}


def _check_applicable(method: str, given: dict[str, Any]) -> None:
    not_applicable = sorted(set(given) - set(get_method(method).param_set().names()))
    if not_applicable:
        raise ParameterError(f"parameter(s) {not_applicable} do not apply to method {method!r}")


def _declarations() -> dict[str, dict[str, Param]]:
    """Every parameter name a method declares → {method: its declaration}, in the order first declared."""
    found: dict[str, dict[str, Param]] = {}
    for method, cls in methods().items():
        for param in cls.param_set():
            found.setdefault(param.name, {})[method] = param
    return found


def _union_help(name: str, declared: dict[str, Param], every: Sequence[str]) -> str:
    """The help of an option over every method: one text where the methods agree (a common parameter's own),
    each method's where they differ; which methods have it when not all; the default, or "per method"."""
    texts: dict[str, list[str]] = {}
    for method, param in declared.items():
        texts.setdefault(_described(param), []).append(method)
    if name in COMMON_PARAMS.names():
        text = _described(COMMON_PARAMS.get(name))
    elif len(texts) == 1:
        text = next(iter(texts))
    else:
        text = " | ".join(f"{', '.join(names)}: {said}" for said, names in texts.items())
    missing = [method for method in every if method not in declared]
    if missing and len(texts) == 1:
        text += f" [only {', '.join(declared)}]" if len(declared) <= len(missing) else \
            f" [all but {', '.join(missing)}]"
    defaults = {repr(param.default) for param in declared.values()}
    return f"{text} (default: {defaults.pop() if len(defaults) == 1 else 'per method'})"


def _add_every_method_params(parser: argparse.ArgumentParser) -> None:
    """One option per parameter any method declares, for `fit --help` without a method."""
    group = parser.add_argument_group("method parameters, of every method (see `python -m inspection methods`)",
                                      "`python -m inspection fit --method M --help` lists only M's parameters, "
                                      "with M's own defaults.")
    every = list(methods())
    for name, declared in _declarations().items():
        kind = next(iter(declared.values())).kind
        group.add_argument(_option(name), dest=f"param_{name}", default=None, metavar=kind.__name__.upper(),
                           help=_escaped(_union_help(name, declared, every)))


def _add_method_params(parser: argparse.ArgumentParser, method: str) -> None:
    """`method`'s parameters with its defaults; every other method's are accepted unlisted, so that giving one
    fails as not applying to `method` (`_check_applicable`) rather than as an unknown option."""
    method_cls = get_method(method)
    own: ParamSet = method_cls.param_set()
    group = parser.add_argument_group(f"parameters of {method} (see `python -m inspection methods`)",
                                      method_cls.description or None)
    for param in own:
        _add_param_option(group, param)
    for name in _declarations():
        if name not in own.names():
            parser.add_argument(_option(name), dest=f"param_{name}", default=None, help=argparse.SUPPRESS)


def _add_fit_method_options(parser: argparse.ArgumentParser, arguments: list[str], method: argparse.Action) -> None:
    """The methods' choices and parameters, once fit is parsed: of the method given by --method when it is one,
    else of every method."""
    method.choices = sorted(methods())
    chosen = _chosen_method(arguments)
    if chosen is None:
        _add_every_method_params(parser)
    else:
        _add_method_params(parser, chosen)


def _add_fit(commands: Commands) -> None:
    fit = commands.add_parser("fit", help="fit a method on a category's good images, evaluate, save one model file")
    method = fit.add_argument("--method", required=True,
                              help="the method to fit; `fit --method M --help` lists M's parameters with M's own "
                                   "defaults")
    fit.add_argument("--data", required=True, help="dataset root (MVTec layout) or a folder with good/ and defect/")
    fit.add_argument("--category", default=None, help="category folder under --data (MVTec layout)")
    fit.add_argument("--out", required=True, help=f"model file to write (the suffix {MODEL_SUFFIX} is added when "
                                                  "missing)")
    fit.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on the test split")
    _add_protocol_options(fit, "aligned", "train and test images")
    fit.defer(lambda parser, arguments: _add_fit_method_options(parser, arguments, method))
    fit.set_defaults(handler=command_fit)


def command_fit(args: argparse.Namespace) -> int:
    """Fit a method on a category's good images, calibrate, evaluate on the test split, save one model file."""
    from .workflows.train import model_path, train

    given = _given_params(args)
    _check_applicable(args.method, given)
    protocol = _protocol(args)
    bars = ProgressBars(args.quiet)
    try:
        result = train(args.method, given, args.data, args.category, args.out, evaluate_test=not args.no_evaluate,
                       progress=bars, protocol=protocol)
    finally:
        bars.close()
    model, info = result.model, result.model.info
    print(f"saved {model_path(args.out)}")
    print(f"fit: {info.fit_seconds:.1f} s on {info.n_fit_images} images; calibrated on {info.n_heldout_images} "
          f"held-out good images (image threshold {model.calibration.image_threshold:.4g}, pixel threshold "
          f"{model.calibration.pixel_threshold:.4g})")
    if result.evaluation is not None:
        print(json.dumps(round_metrics(result.evaluation.metrics), indent=2))
    print(promise_report(model.calibration, result.evaluation.metrics if result.evaluation is not None else {}))
    return 0


# --- evaluate ----------------------------------------------------------------------------------------------------


def _add_evaluate(commands: Commands) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics and speed of a model on a test split")
    evaluate.add_argument("--model", required=True, help="model file, with or without its suffix")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--category", default=None)
    _add_device_option(evaluate)
    evaluate.add_argument("--json", default=None, help="write the metrics and per-image scores here")
    _add_protocol_options(evaluate, None, "test images")
    evaluate.set_defaults(handler=command_evaluate)


def command_evaluate(args: argparse.Namespace) -> int:
    """Score a model on a test split and print (and optionally write) its metrics."""
    from .teach.teaching import library_recall
    from .workflows.evaluate import evaluate

    if args.json:
        check_output_file(args.json)
    _protocol_seed(args)  # a wrong seed fails before the model is loaded
    model = load_model(args.model, device=_device(args))
    protocol = _protocol(args, model.info.alignment_protocol())
    dataset = open_dataset(args.data, args.category).with_protocol(protocol)
    bars = ProgressBars(args.quiet)
    try:
        evaluation = evaluate(model, dataset, progress=bars)
    finally:
        bars.close()
    library = library_recall(model)  # the defects taught from the floor, per type, at the saved threshold
    if library:
        evaluation.metrics["library_recall"] = library
    result = {"model": str(args.model), "method": model.name, "category": dataset.category,
              **evaluation.metrics, "scores": evaluation.records}
    if args.json:
        Path(args.json).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).expanduser().write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    print(json.dumps(round_metrics(evaluation.metrics), indent=2))
    return 0


# --- predict -----------------------------------------------------------------------------------------------------

_LARGE_IMAGE = Param("large_image", int, 0, "Side of the large test image.", minimum=16, maximum=20000)
_WORST = Param("worst", int, 12, "The highest-scoring images pictured in the report.", minimum=0, maximum=200)


def _add_predict(commands: Commands) -> None:
    predict = commands.add_parser("predict", help="score image files or folders: CSV + heatmap overlays (+ HTML "
                                                  "report); a rerun into the same --out skips what is scored")
    predict.add_argument("--model", required=True, help="model file, with or without its suffix")
    predict.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    predict.add_argument("--out", required=True, help="output folder")
    _add_device_option(predict)
    batch_size = COMMON_PARAMS.get("batch_size")
    predict.add_argument("--batch-size", default=16, metavar="INT",
                         help=f"images per forward pass ({batch_size.minimum:g} to {batch_size.maximum:g})")
    predict.add_argument("--report", action="store_true",
                         help="also write report.html: one self-contained page with the counts, the score histogram, "
                              "the flagged and worst images' heatmaps and every file's row")
    predict.add_argument("--worst", default=_WORST.default, metavar="N",
                         help=f"the report pictures every flagged image and at least the N highest scores "
                              f"(default {_WORST.default}; {_WORST.maximum:g} pictures at most)")
    predict.add_argument("--overlays", default="all", choices=OVERLAY_CHOICES,
                         help="which images get a heatmap overlay PNG in --out (default: all)")
    predict.add_argument("--restart", action="store_true",
                         help="score every image again, even those an earlier run into --out scored already")
    predict.add_argument("--parquet", action="store_true",
                         help="also write predictions.parquet (the CSV's columns, typed)")
    _add_engine_options(predict)
    predict.add_argument("--runtime", default="auto", choices=RUNTIMES,
                         help="what scores: torch (a model file), onnx or openvino (a folder made by `export`); auto: "
                              "torch for a model file; for an exported folder OpenVINO where it holds its graphs and "
                              "it is installed, else onnxruntime")
    predict.set_defaults(handler=command_predict)


def _add_engine_options(predict: argparse.ArgumentParser) -> None:
    """--engine and the options of its Ray engine."""
    predict.add_argument("--engine", default="local", choices=("local", "ray"),
                         help="local: score here (default); ray: on a Ray cluster, a pool of actors each holding the "
                              "model (a GPU per actor where there are GPUs); needs the optional extra "
                              "(pip install \"inspection[ray]\")")
    predict.add_argument("--address", default=None,
                         help="with --engine ray: the cluster to join (e.g. ray://head:10001, or auto); without it "
                              "a local Ray starts on this machine. Every node must see the inputs and --out (a "
                              "shared file system) or read the inputs by URI (s3://…)")
    predict.add_argument("--actors", default=None, type=int, metavar="INT",
                         help="with --engine ray: model copies (default: one per GPU, else one per CPU of the "
                              "cluster)")


def command_predict(args: argparse.Namespace) -> int:
    """Score image files and folders with a model: a CSV, heatmap overlays and optionally an HTML report."""
    from .workflows.batch import PARQUET_NAME, collect_inputs, score_files, score_locally, write_parquet
    from .workflows.report import write_report

    batch_size = COMMON_PARAMS.get("batch_size").coerce(args.batch_size)
    worst = _WORST.coerce(args.worst)
    out = check_output_folder(args.out)  # before the model is loaded or anything is scored
    if args.engine != "ray" and (args.address or args.actors is not None):
        raise ParameterError("--address and --actors are options of --engine ray")
    model = load_scorer(args.model, args.runtime, device=_device(args))
    if args.engine == "ray" and model.runtime != "torch":
        raise ParameterError("--engine ray scores model files in torch; an exported folder is scored locally")
    files = collect_inputs(args.inputs)
    engine = score_locally
    if args.engine == "ray":
        from .workflows.scale_out import RayEngine

        engine = RayEngine(args.model, address=args.address, actors=args.actors)
    try:
        summary = score_files(model, files, out, batch_size, quiet=args.quiet, resume=not args.restart,
                              overlays=args.overlays, engine=engine)
    except KeyboardInterrupt:
        print(f"interrupted: the images scored so far are kept in {out}; the same command goes on from there",
              file=sys.stderr)
        return 130
    finally:
        if args.engine == "ray":
            engine.shutdown()
    if summary.restarted:
        print(f"note: the earlier results in {out} were made with another model or other thresholds: every image "
              "was scored again", file=sys.stderr)
    if summary.scored == 0:
        raise ParameterError(f"none of the {summary.failed} input(s) could be scored: unreadable, or an image the "
                             f"model cannot judge (reasons in {summary.csv_path})")
    written = [str(summary.csv_path)] + (["overlays"] if args.overlays != "none" else [])
    if args.parquet:
        written.append(str(write_parquet(summary.out / PARQUET_NAME, summary.rows)))
    if args.report:
        written.append(str(write_report(model, summary, worst=worst, model_name=Path(args.model).name,
                                        inputs=[str(name) for name in args.inputs], batch_size=batch_size).path))
    earlier = f" ({summary.skipped} already scored by an earlier run: skipped)" if summary.skipped else ""
    where = f" ({engine.description})" if args.engine == "ray" and engine.description else ""
    unlike = f", {summary.unlike} unlike the training data (no verdict)" if summary.unlike else ""
    print(f"scored {summary.scored} image(s){earlier}{where}: {summary.flagged} defect(s) at threshold "
          f"{model.calibration.normalized_image_threshold:.3f} (normalised){unlike}; {summary.failed} not scored "
          f"(unreadable, or not an image the model can judge: reasons in the CSV); wrote {', '.join(written)}")
    return 0


# --- export ------------------------------------------------------------------------------------------------------


def _add_export(commands: Commands) -> None:
    export = commands.add_parser("export", help="write a model as a folder the torch-free runtime scores (ONNX, "
                                                "OpenVINO IR) for a line PC")
    export.add_argument("--model", required=True, help="model file, with or without its suffix")
    export.add_argument("--format", nargs="+", default=["onnx"], choices=ENGINES, dest="formats",
                        help="onnx (onnxruntime; default) and/or openvino (IR converted by OpenVINO from the ONNX "
                             "graph)")
    export.add_argument("--out", required=True, help="the folder to write (an earlier export there is replaced)")
    export.add_argument("--image-size", nargs="+", default=[], metavar="WIDTHxHEIGHT",
                        help="aspect mode: the size of the frames the line sends (one graph per working size)")
    export.add_argument("--example", nargs="+", default=[], metavar="IMAGES",
                        help="aspect mode: image files or folders whose sizes the export takes")
    _add_device_option(export)
    export.set_defaults(handler=command_export)


def _image_size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" → (height, width)."""
    try:
        width, height = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ParameterError(f"--image-size {text!r}: expected WIDTHxHEIGHT, e.g. 500x1250") from None
    if width < 1 or height < 1:
        raise ParameterError(f"--image-size {text!r}: sides must be positive")
    return height, width


def command_export(args: argparse.Namespace) -> int:
    """Export a model: one graph per working size, its header as JSON, checked against the torch model."""
    from .export.exporting import export_model, sizes_of

    model = load_model(args.model, device=_device(args))
    sizes = [_image_size(text) for text in args.image_size] + sizes_of(args.example)
    summary = export_model(model, args.out, args.formats, sizes)
    graphs = ", ".join(f"{entry.working[1]}×{entry.working[0]}" for entry in summary.graphs)
    print(f"exported {model.name} to {summary.folder} ({' and '.join(summary.formats)}; working size {graphs}); "
          f"largest difference from the torch model on example images: {summary.max_map_difference:.2g} in the map, "
          f"{summary.max_score_difference:.2g} in the score (raw units). Score it with: python -m inspection.runtime "
          f"{summary.folder} IMAGES --out DIR")
    return 0


# --- explain -----------------------------------------------------------------------------------------------------


def _add_explain(commands: Commands) -> None:
    explain = commands.add_parser("explain", help="Grad-CAM of an image's score (which features it depends "
                                                 "on), written as an overlay PNG")
    explain.add_argument("--model", required=True, help="model file, with or without its suffix")
    explain.add_argument("image", help="image file")
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.add_argument("--layer", default=None, help="backbone layer, one of the model's (default: its deepest)")
    explain.add_argument("--guided", action="store_true", help="Guided Grad-CAM: guided backpropagation's saliency "
                                                               "times Grad-CAM (finer detail)")
    explain.add_argument("--cam", action="store_true", help="instead: the class activation map of the model's defect "
                                                            "classifier (see the classifier command)")
    _add_device_option(explain)
    explain.set_defaults(handler=command_explain)


def command_explain(args: argparse.Namespace) -> int:
    """Write an overlay PNG of what an image's score depends on: (Guided) Grad-CAM, or the classifier's CAM."""
    import cv2

    from .data.images import load_image
    from .explain.gradcam import explain_image
    from .results.image import DISPLAY_MAX_SIDE

    out = check_output_file(args.out)  # before the model is loaded
    if args.cam and (args.guided or args.layer):
        raise ParameterError("--cam shows the defect classifier's map, at the layer it was fitted on: --guided and "
                             "--layer do not apply")
    model = load_model(args.model, device=_device(args))
    image = load_image(args.image, max_side=DISPLAY_MAX_SIDE)
    if args.cam:
        from .explain.classifier import class_activation_map

        found = class_activation_map(model, image)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(cv2.imencode(".png", found.overlay(image)[:, :, ::-1])[1].tobytes())
        print(f"wrote {out}: class activation map of the defect classifier at layer {found.layer} (defect "
              f"probability {found.probability:.2f})")
        return 0
    explanation = explain_image(model, image, layer=args.layer, guided=args.guided)
    picture = explanation.overlay(image, guided=args.guided)
    # Encoded in memory: the file is a PNG whatever its name says.
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cv2.imencode(".png", picture[:, :, ::-1])[1].tobytes())  # OpenCV wants BGR
    kind = "Guided Grad-CAM" if args.guided else "Grad-CAM"
    print(f"wrote {out}: {kind} of the image score (raw {explanation.score:.4g}) at layer {explanation.layer}")
    return 0


# --- classifier --------------------------------------------------------------------------------------------------


def _add_classifier(commands: Commands) -> None:
    classifier = commands.add_parser("classifier", help="fit a good/defect classifier head on a model's backbone from "
                                                        "labelled images, kept in the model file (for explain --cam "
                                                        "and the Inspect page's CAM)")
    classifier.add_argument("--model", required=True, help="model file, with or without its suffix")
    classifier.add_argument("--good", nargs="+", required=True, help="folders and/or files of good images")
    classifier.add_argument("--defect", nargs="+", default=[], help="folders and/or files of defect images (the "
                                                                    "model's defect library joins them: teach)")
    classifier.add_argument("--layer", default=None, help="backbone layer, one of the model's (default: its deepest)")
    _add_device_option(classifier)
    classifier.set_defaults(handler=command_classifier)


def command_classifier(args: argparse.Namespace) -> int:
    """Fit a good/defect classifier head on a model's backbone and keep it in the model file."""
    from .data.uris import is_uri, read_uri
    from .explain.classifier import attach_defect_classifier, fit_defect_classifier
    from .teach.teaching import history, library_images
    from .workflows.batch import collect_inputs

    # A URI's bytes are read here (decoding takes paths, bytes and arrays); a path is read when its turn comes.
    good = [read_uri(source) if is_uri(source) else source for source, _ in collect_inputs(args.good)]
    defect = [read_uri(source) if is_uri(source) else source for source, _ in collect_inputs(args.defect)]
    defect += [image for image, _ in library_images(history(args.model))]  # defects taught from the floor
    model = load_model(args.model, device=_device(args))
    fitted = fit_defect_classifier(model, good, defect, layer=args.layer, seed=model.seed)
    attach_defect_classifier(args.model, fitted)
    record = fitted.record
    print(f"defect classifier at layer {fitted.layer}: {record['n_good']} good and {record['n_defect']} defect "
          f"images, cross-validated accuracy {record['cv_accuracy']:.1%} ({record['cv_folds']} folds); kept in "
          f"{args.model} (explain --cam, the Inspect page)")
    return 0


# --- recalibrate -------------------------------------------------------------------------------------------------


def _add_recalibrate(commands: Commands) -> None:
    recalibrate = commands.add_parser("recalibrate", help="set a model's thresholds again from new good images "
                                                         "(no refit); --undo brings the previous ones back")
    recalibrate.add_argument("--model", required=True, help="model file, with or without its suffix")
    recalibrate.add_argument("inputs", nargs="*", help="folders and/or files of new good images")
    recalibrate.add_argument("--undo", action="store_true", help="restore the thresholds before the last recalibration")
    recalibrate.set_defaults(handler=command_recalibrate)


def command_recalibrate(args: argparse.Namespace) -> int:
    """Set a model's thresholds again from new good images, or (--undo) restore the previous ones."""
    from .workflows.batch import collect_inputs
    from .workflows.recalibrate import recalibrate, undo_recalibration

    if args.undo:
        header = undo_recalibration(args.model)
        print(f"restored the thresholds before the last recalibration (image {header.calibration.image_threshold:.4g}, "
              f"pixel {header.calibration.pixel_threshold:.4g}); {len(header.calibration.history)} older in history")
        return 0
    if not args.inputs:
        raise ParameterError("give folders or files of new good images to recalibrate on (or --undo)")
    images = [path for path, _ in collect_inputs(args.inputs)]
    bars = ProgressBars(args.quiet)
    try:
        header = recalibrate(args.model, images, progress=bars)
    finally:
        bars.close()
    calibration, previous = header.calibration, header.calibration.history[-1]
    print(f"recalibrated on {len(images)} good images: image threshold {previous['image_threshold']:.4g} → "
          f"{calibration.image_threshold:.4g}, pixel threshold {previous['pixel_threshold']:.4g} → "
          f"{calibration.pixel_threshold:.4g} (the old ones are kept; `--undo` brings them back)")
    return 0


# --- teach -------------------------------------------------------------------------------------------------------


def _add_teach(commands: Commands) -> None:
    teach = commands.add_parser("teach", help="teach a model that images are good (false alarms) or defects, without "
                                              "a refit; --undo, --history")
    teach.add_argument("--model", required=True, help="model file, with or without its suffix")
    teach.add_argument("--good", nargs="+", default=[], metavar="IMAGE_OR_FOLDER",
                       help="images (or folders of them) that are good parts")
    teach.add_argument("--defect", nargs="+", default=[], metavar="IMAGE_OR_FOLDER",
                       help="images (or folders of them) that show a defect of type --type")
    teach.add_argument("--type", default="", help="the defects' type name (with --defect), e.g. crack")
    teach.add_argument("--who", default="", help="who decided (default: this machine's user name)")
    teach.add_argument("--undo", action="store_true", help="undo the latest decision (the model as it was before it)")
    teach.add_argument("--history", action="store_true", help="list the decisions in force, oldest first")
    teach.add_argument("--refit", action="store_true", help="fit the model again with the taught good images it keeps "
                                                           "for a refit (methods that cannot learn without one)")
    teach.set_defaults(handler=command_teach)


def command_teach(args: argparse.Namespace) -> int:
    """Teach a model good images or defects, undo the latest decision, or list the decisions."""
    from .model.modelfile import read_model_header
    from .teach.teaching import GOOD, history, teach, undo
    from .workflows.batch import collect_inputs

    if args.history:
        decisions = history(args.model)
        for decision in decisions:
            print(f"{decision.id}  {decision.summary}")
        print(f"{len(decisions)} decisions in force" if decisions else "nothing was taught to this model")
        return 0
    if args.refit:
        from .workflows.refit import refit_with_taught

        bars = ProgressBars(args.quiet)
        try:
            result = refit_with_taught(args.model, progress=bars)
        finally:
            bars.close()
        print(f"refitted {result.path} on {result.model.info.n_fit_images} good images, taught ones included")
        return 0
    if args.undo:
        decision = undo(args.model)
        print(f"undone: {decision.summary} (model {read_model_header(args.model).info.display_name or args.model} as "
              "it was before it)")
        return 0
    if not args.good and not args.defect:
        raise ParameterError("give --good or --defect images to teach (or --undo, --history)")
    if args.defect and not args.type.strip():
        raise ParameterError("--defect needs --type NAME (e.g. --type crack)")
    outcomes = []
    for images, action in ((args.good, GOOD), (args.defect, "defect")):
        if images:
            files = [path for path, _ in collect_inputs(images)]
            outcomes += teach(args.model, files, action, defect_type=args.type, who=args.who)
    for outcome in outcomes:
        print(outcome.decision.summary if outcome.decision else outcome.unchanged)
    kept = [outcome for outcome in outcomes if outcome.decision and outcome.decision.use == "kept for a refit"]
    if kept:
        print(f"{len(kept)} images are kept in the model's good set: this method learns them only by a refit "
              f"(inspection teach --model {args.model} --refit)")
    return 0


# --- bench -------------------------------------------------------------------------------------------------------

_BENCH_METHODS_HELP = ("methods to run ({}), each optionally with settings of its own, e.g. vae:scoring=residual "
                       "(the same method may be given with different settings)")


def _add_bench(commands: Commands) -> None:
    bench = commands.add_parser("bench", help="fit + evaluate each method on each category; results.json/.md")
    listed = bench.add_argument("--methods", nargs="+", required=True, metavar="METHOD[:NAME=VALUE,…]",
                                help=_BENCH_METHODS_HELP.format("see `python -m inspection methods`"))
    # The method names in the help are looked up when bench is parsed (it runs them anyway), not for every command.
    bench.defer(lambda parser, arguments: setattr(listed, "help",
                                                  _BENCH_METHODS_HELP.format(", ".join(sorted(methods())))))
    bench.add_argument("--data", nargs="+", required=True, help="dataset root(s); categories are looked up in each")
    bench.add_argument("--categories", nargs="+", required=True)
    bench.add_argument("--out", required=True, help="output folder")
    _add_device_option(bench)
    bench.add_argument("--set", nargs="*", metavar="[SCOPE:…]NAME=VALUE",
                       help="parameter overrides, for all runs or for the runs of one category, one method, or "
                            "both (e.g. magnetic_tile:resize_mode=full, vae:epochs=100, magnetic_tile:vae:epochs=10)")
    bench.add_argument("--contention", action="store_true",
                       help="instead of accuracy: time predict and fit quiet and beside busy neighbours (the first "
                            "method, each category); writes contention.json and contention.md")
    _add_protocol_options(bench, "aligned", "train and test images")
    bench.add_argument("--large-image", default=None, metavar="SIDE",
                       help="also measure the peak memory of predict on one SIDE×SIDE grayscale PNG (e.g. 9999)")
    bench.add_argument("--backbones", nargs="+", metavar="BACKBONE",
                       help="a sweep: run every method at each of these backbones (see `methods`)")
    bench.add_argument("--sides", nargs="+", type=int, metavar="PIXELS",
                       help="a sweep: run every method at each input side the backbone sees (the square, or the "
                            "shorter side in aspect mode); also writes sweep.md and sweep.png")
    bench.add_argument("--runtime", default="torch", choices=("torch", *ENGINES),
                       help="onnx or openvino: export each fitted model and measure its accuracy and speed on that "
                            "runtime (the torch model's beside them, as torch_…); default torch")
    bench.set_defaults(handler=command_bench)


def command_bench(args: argparse.Namespace) -> int:
    """Fit and evaluate each method on each category (or time contention); write results.json and results.md."""
    from .bench.run import run_bench

    check_output_folder(args.out)
    protocol = _protocol(args)
    if args.contention:
        if not protocol.aligned:
            raise ParameterError("--protocol does not apply to --contention (it measures speed, not accuracy)")
        from .bench.contention import run_contention
        from .bench.run import find_root, parse_method_spec

        method, _ = parse_method_spec(args.methods[0])  # a method's own settings do not apply to contention runs
        for category in args.categories:
            run_contention(find_root(args.data, category), category, Path(args.out), method=method,
                           quiet=args.quiet)
        return 0
    large_image = None if args.large_image is None else _LARGE_IMAGE.coerce(args.large_image)
    run_bench(methods=args.methods, data_roots=args.data, categories=args.categories, out=Path(args.out),
              settings=args.set or [], device=_device(args), quiet=args.quiet, large_image=large_image,
              protocol=protocol, backbones=args.backbones or (), sides=args.sides or (), runtime=args.runtime)
    return 0


# --- methods, demo -----------------------------------------------------------------------------------------------


def _add_methods(commands: Commands) -> None:
    listing = commands.add_parser("methods", help="list methods, their parameters, and backbones")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=command_methods)


def command_methods(args: argparse.Namespace) -> int:
    """Print every method with its parameters and defaults, and the backbones (as text or JSON)."""
    described = {name: {"description": cls.description,
                        "params": [param.describe() for param in cls.param_set()]}
                 for name, cls in methods().items()}
    if args.json:
        listed = {name: {"description": spec.description,
                         "layers": {layer: vars(info) for layer, info in spec.layers.items()}}
                  for name, spec in backbones().items()}
        print(json.dumps({"methods": described, "backbones": listed}, indent=2))
        return 0
    for name, entry in described.items():
        print(f"{name}: {entry['description']}")
        for param in entry["params"]:
            allowed = f" one of {list(param['choices'])}" if param["choices"] else ""
            print(f"  --{param['name'].replace('_', '-')} ({param['kind']}, default {param['default']!r}){allowed}: "
                  f"{param['help']}")
    print("backbones: " + ", ".join(backbones()))
    return 0


def _add_demo(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="generate the built-in demo dataset and print its path")
    demo.add_argument("--out", default=None, help="root folder (default: the data cache)")
    demo.set_defaults(handler=command_demo)


def command_demo(args: argparse.Namespace) -> int:
    """Generate the built-in demo dataset (in --out or the data cache) and print its path."""
    from .data.demo import demo_dataset, generate_demo_dataset

    print(generate_demo_dataset(args.out) if args.out else demo_dataset())
    return 0


# --- serve -------------------------------------------------------------------------------------------------------


def _add_serve(commands: Commands) -> None:
    from .service.limits import add_options

    serve = commands.add_parser("serve", help="an HTTP service scoring images with one model (POST /v1/inspect; "
                                              "docs at /docs); needs the optional extra (pip install "
                                              "\"inspection[serve]\")")
    add_options(serve)
    _add_device_option(serve)
    serve.set_defaults(handler=command_serve)


def command_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP until interrupted."""
    from .service.limits import limits_from

    limits = limits_from(args)
    try:
        from .service.server import serve
    except ImportError as error:  # fastapi or uvicorn missing
        raise ParameterError(f"the service needs the optional extra: pip install \"inspection[serve]\" ({error})"
                             ) from None
    serve(args.model, host=args.host, port=args.port, runtime=args.runtime, limits=limits, device=_device(args))
    return 0


# --- run (live pipelines) ----------------------------------------------------------------------------------------


def _add_run(commands: Commands) -> None:
    run = commands.add_parser("run", help="a live pipeline: a video, camera, stream or watched folder scored frame "
                                          "by frame, verdicts sent to folders, CSV, webhooks or MQTT")
    run.add_argument("pipeline", nargs="?", metavar="PIPELINE_FILE",
                     help="a pipeline file (TOML: docs/live.md); the flags below add to it or stand instead of it")
    run.add_argument("--model", help="model file, or a folder made by `export`")
    run.add_argument("--source", help="a video file, usb:N (a USB camera), an rtsp:// or http(s):// (MJPEG) URL, or "
                                      "a folder watched for new images")
    run.add_argument("--sink", action="append", default=[], metavar="KIND:TARGET",
                     help="folder:DIR (overlays + JSON lines), csv:FILE, webhook:URL, mqtt://HOST:PORT/TOPIC; "
                          "repeat for several")
    run.add_argument("--every", default="all", choices=("all", "defects"),
                     help="which frames the flags' sinks send (default all)")
    run.add_argument("--max-per-s", type=float, metavar="N", help="the flags' sinks send at most N messages a second")
    run.add_argument("--runtime", choices=RUNTIMES, help="what scores (default auto, as for predict)")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N scored frames")
    run.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    run.add_argument("--as-fast-as-read", action="store_true",
                     help="a video file is read as fast as the model scores (default: at its own frame rate, like a "
                          "camera)")
    run.add_argument("--status-every", type=float, default=5.0, metavar="S",
                     help="print the counts every S seconds (default 5; 0: only at the end)")
    run.add_argument("--report", metavar="FILE", help="write the final counts and latencies as JSON")
    _add_device_option(run)
    run.set_defaults(handler=command_run)


def command_run(args: argparse.Namespace) -> int:
    """Run a pipeline until its source ends, its limits are reached, or Ctrl-C."""
    from .live.spec import PipelineSpec, SinkSpec, build_pipeline, read_spec

    if args.pipeline:
        spec = read_spec(args.pipeline)
        spec.model = args.model or spec.model
        spec.source = args.source or spec.source
        spec.runtime = args.runtime or spec.runtime
    elif not (args.model and args.source):
        raise ParameterError("give a pipeline file, or --model and --source (and --sink KIND:TARGET for where the "
                             "verdicts go)")
    else:
        spec = PipelineSpec(model=args.model, source=args.source, runtime=args.runtime or "auto")
    spec.sinks += [SinkSpec(target, every=args.every, max_per_s=args.max_per_s) for target in args.sink]
    spec.max_frames = args.max_frames or spec.max_frames
    spec.max_seconds = args.seconds or spec.max_seconds
    spec.realtime = spec.realtime and not args.as_fast_as_read
    spec.__post_init__()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # An unreachable camera or URL: one line and exit code 2 within the source's timeout, before the model loads.
    pipeline = build_pipeline(spec, log=say, device=_device(args), open_source=True)
    with _stop_on_signals() as received:
        pipeline.start()
        try:
            last = time.monotonic()
            while pipeline.running:
                time.sleep(0.2)
                if args.status_every and time.monotonic() - last >= args.status_every:
                    last = time.monotonic()
                    say(pipeline.status().summary())
        except KeyboardInterrupt:
            say(f"stopping ({received.get('signal', 'Ctrl-C')}): finishing the frame being scored and flushing the "
                "sinks")
        status = pipeline.stop()
    if args.report:
        Path(args.report).write_text(json.dumps(status.as_dict(), indent=2, default=str))
    print(status.summary())
    return 0 if status.error is None else 2


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, str]]:
    """While inside, SIGINT and SIGTERM raise KeyboardInterrupt, so that they stop a running pipeline as Ctrl-C does;
    the dict yielded names the one received ("signal"). The handlers before are set again on leaving.

    A shell starts a background job (`inspection run … &`) with SIGINT ignored, which Python then leaves ignored, and
    a supervisor (systemd, `docker stop`) stops a service with SIGTERM, which would end it without flushing the sinks.
    """
    received: dict[str, str] = {}

    def stop(signum: int, frame: object) -> None:
        received["signal"] = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        raise KeyboardInterrupt

    before: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        before = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


# --- the parser and the one place errors become one line ---------------------------------------------------------

_COMMANDS = (_add_fit, _add_evaluate, _add_predict, _add_export, _add_explain, _add_classifier, _add_recalibrate,
             _add_teach, _add_bench, _add_methods, _add_demo, _add_serve, _add_run)


def build_parser() -> argparse.ArgumentParser:
    """The top parser, with one sub-parser per command (each declared by its `_add_…` beside its handler)."""
    parser = _Parser(prog="python -m inspection",
                     description="Visual inspection by anomaly detection: train on good images, score new ones.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user's error is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        configure_threads()
        return args.handler(args)

    return run_command(body, interrupted="nothing was written")
