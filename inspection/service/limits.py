"""The service's settings, their defaults and its command-line options (`inspection serve` and `python -m
inspection.service` share them): where it listens, the token's variable, what it takes at once. No web framework
is imported here: the CLI builds its help without the optional extra."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..errors import ParameterError
from ..export.scorers import RUNTIMES

#: The environment variable holding the bearer token the service asks for (unset or empty: no token).
TOKEN_ENV = "INSPECTION_API_TOKEN"
#: What the service listens on unless told otherwise.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_MAX_MB = 20.0
#: Requests decoded and scored at once (the model itself scores one image at a time).
DEFAULT_WORKERS = 2
#: Requests held waiting for a worker; one more is answered 503 at once.
DEFAULT_QUEUE = 8
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What the service takes at once: the largest body (bytes), requests scored at once, requests waiting."""

    max_bytes: int = int(DEFAULT_MAX_MB * MB)
    workers: int = DEFAULT_WORKERS
    queue: int = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.workers < 1 or self.queue < 0:
            raise ValueError(f"limits must be positive (the queue may be 0): {self}")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The service's options: the model, where to listen, the runtime, the limits."""
    parser.add_argument("--model", required=True, help="model file, or a folder made by `export`")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"the address to listen on (default {DEFAULT_HOST}); anything but loopback needs "
                             f"{TOKEN_ENV} set: clients then send 'Authorization: Bearer <it>'")
    parser.add_argument("--port", default=DEFAULT_PORT, type=int, help=f"default {DEFAULT_PORT}; 0: a free one")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="what scores: torch (a model file), onnx or openvino (a folder made by `export`); auto: "
                             "torch for a model file; for an exported folder OpenVINO where it holds its graphs and "
                             "it is installed, else onnxruntime")
    parser.add_argument("--max-mb", default=DEFAULT_MAX_MB, type=float, metavar="MB",
                        help=f"the largest request (default {DEFAULT_MAX_MB:g} MB): a larger one is answered 413")
    parser.add_argument("--workers", default=DEFAULT_WORKERS, type=int, metavar="N",
                        help=f"requests decoded and scored at once (default {DEFAULT_WORKERS}; the model itself "
                             "scores one image at a time)")
    parser.add_argument("--queue", default=DEFAULT_QUEUE, type=int, metavar="N",
                        help=f"requests waiting for a worker (default {DEFAULT_QUEUE}); one more is answered 503 at "
                             "once")


def limits_from(args: argparse.Namespace) -> Limits:
    """The limits the options ask for, each checked (ParameterError: one line naming the option)."""
    if not 0 < args.max_mb <= 4096:
        raise ParameterError(f"--max-mb must be above 0 and at most 4096, not {args.max_mb:g}")
    if not 1 <= args.workers <= 64:
        raise ParameterError(f"--workers must be 1 to 64, not {args.workers}")
    if not 0 <= args.queue <= 4096:
        raise ParameterError(f"--queue must be 0 to 4096, not {args.queue}")
    if not 0 <= args.port <= 65535:
        raise ParameterError(f"--port must be 0 to 65535, not {args.port}")
    return Limits(max_bytes=int(args.max_mb * MB), workers=args.workers, queue=args.queue)
