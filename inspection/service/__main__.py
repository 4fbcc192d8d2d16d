"""`python -m inspection.service --model EXPORTED_DIR [--host …] [--port …]`: the HTTP service without the rest of the
command line — and without torch when it serves an exported folder (a line PC with only the runtime installed).
The same options as `python -m inspection serve`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import run_command
from .limits import add_options, limits_from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inspection.service",
                                     description="An HTTP service scoring images with one model (POST /v1/inspect; "
                                                 "docs at /docs).")
    add_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        limits = limits_from(args)
        try:  # FastAPI and uvicorn are imported where the service starts
            from .server import serve

            serve(args.model, host=args.host, port=args.port, runtime=args.runtime, limits=limits)
        except ImportError as error:
            print(f"error: the service needs the optional extra: pip install \"inspection[serve]\" ({error})",
                  file=sys.stderr)
            return 2
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
