"""`python -m inspection.runtime EXPORTED_DIR IMAGES_OR_FOLDERS… --out DIR`: score with an exported model, without
torch — the same `predictions.csv`, overlays and report as `python -m inspection predict`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ParameterError, run_command
from ..outputs import check_output_folder
from ..workflows.batch import OVERLAY_CHOICES, collect_inputs, score_files
from .exported import ENGINES, load_export


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inspection.runtime",
                                     description="Score images with an exported model (no torch needed): "
                                                 "predictions.csv and heatmap overlays.")
    parser.add_argument("model", help="a folder made by `python -m inspection export`")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--engine", default="auto", choices=("auto", *ENGINES),
                        help="onnx: onnxruntime; openvino; auto (default): OpenVINO where the folder holds its graphs "
                             "and it is installed, else onnxruntime")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--overlays", default="all", choices=OVERLAY_CHOICES,
                        help="which images get a heatmap overlay PNG in --out (default: all)")
    parser.add_argument("--restart", action="store_true", help="score every image again")
    parser.add_argument("--report", action="store_true", help="also write report.html")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if not 1 <= args.batch_size <= 1024:
            raise ParameterError(f"--batch-size must be 1 to 1024, not {args.batch_size}")
        out = check_output_folder(args.out)
        model = load_export(args.model, args.engine, batch_size=args.batch_size)
        summary = score_files(model, collect_inputs(args.inputs), out, args.batch_size, quiet=args.quiet,
                              resume=not args.restart, overlays=args.overlays)
        if summary.scored == 0:
            raise ParameterError(f"none of the {summary.failed} input(s) could be scored (reasons in "
                                 f"{summary.csv_path})")
        written = [str(summary.csv_path)]
        if args.report:
            from ..workflows.report import write_report

            written.append(str(write_report(model, summary, model_name=str(args.model),
                                            inputs=[str(name) for name in args.inputs],
                                            batch_size=args.batch_size).path))
        unlike = f", {summary.unlike} unlike the training data (no verdict)" if summary.unlike else ""
        print(f"scored {summary.scored} image(s) with {model.name} on {model.runtime}: {summary.flagged} defect(s)"
              f"{unlike}; {summary.failed} not scored (reasons in the CSV); wrote {', '.join(written)}")
        return 0

    return run_command(body, interrupted="the images scored so far are kept; the same command goes on from there")


if __name__ == "__main__":
    sys.exit(main())
