"""`python -m inspection.service --model EXPORTED_DIR [--host …] [--port …]`: the HTTP service without the rest of the
command line — and without torch when it serves an exported folder (a line PC with only the runtime installed).
The same options as `python -m inspection serve`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import friendly_error, is_user_error
from .limits import add_options, limits_from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inspection.service",
                                     description="An HTTP service scoring images with one model (POST /v1/inspect; "
                                                 "docs at /docs).")
    add_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        limits = limits_from(args)
        from .server import serve

        serve(args.model, host=args.host, port=args.port, runtime=args.runtime, limits=limits)
        return 0
    except KeyboardInterrupt:
        return 130
    except ImportError as error:
        print(f"error: the service needs the optional extra: pip install \"inspection[serve]\" ({error})",
              file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the one place a user's error becomes one line
        if not is_user_error(error):
            raise
        print(f"error: {friendly_error(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
