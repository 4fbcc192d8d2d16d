"""`inspection serve`: open a model once, bind a socket, and run the service under uvicorn.

Without a token (`INSPECTION_API_TOKEN`) the service binds to the loopback interface only: anyone who can reach
the port could otherwise use it. The startup line says where it listens (the real port, also for `--port 0`) and
whether a token is needed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from ..errors import ImageLoadError, ParameterError
from ..model.scorer import Scorer
from .limits import DEFAULT_HOST, DEFAULT_PORT, MB, TOKEN_ENV, Limits

_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_from_environment() -> str | None:
    """The bearer token the service asks for: INSPECTION_API_TOKEN, None when unset or empty."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def check_binding(host: str, token: str | None) -> None:
    """Refuse (ParameterError) to listen beyond loopback without a token: say how to do either."""
    if token is None and not is_loopback(host):
        raise ParameterError(f"no {TOKEN_ENV} is set, so the service listens on loopback only (127.0.0.1), not on "
                             f"{host}: set {TOKEN_ENV} to a secret to serve other machines (clients then send "
                             "'Authorization: Bearer <it>'), or leave --host at 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), refused in one line when it cannot be had."""
    name = "127.0.0.1" if host.lower() in _LOOPBACK_NAMES else host.strip("[]")
    try:
        family = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise ParameterError(f"--host {host}: {error.strerror or error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((name, port))
        listener.listen(128)
    except OSError as error:
        listener.close()
        raise ParameterError(f"cannot listen on {host}:{port}: {error.strerror or error} (another service on the "
                             "port? choose another with --port)") from None
    listener.set_inheritable(True)
    return listener


def warm_up(scorer: Scorer) -> None:
    """Score one grey picture, so that the first client does not wait for the model's lazy start (skipped when the
    model cannot take it, e.g. an export made for other frame sizes)."""
    preprocessing = scorer.preprocessing
    side = max(preprocessing.min_side, preprocessing.resize, preprocessing.crop)
    try:
        preprocessing.check_inspectable(side, side)
        scorer.predict([np.full((side, side, 3), 128, np.uint8)])
    except ImageLoadError:
        pass


def url(host: str, port: int) -> str:
    return f"http://[{host.strip('[]')}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, runtime: str = "auto",
          limits: Limits | None = None, device: str | None = None, out: TextIO = sys.stdout) -> None:
    """Open `model`, bind host:port and serve until interrupted; the token comes from the environment."""
    import uvicorn

    from ..export.scorers import load_scorer
    from .app import create_app

    token = token_from_environment()
    check_binding(host, token)  # before the model is opened: a refusal is said at once
    limits = limits or Limits()
    listener = bind(host, port)  # before the model is opened too: a port in use is said at once
    try:
        scorer = load_scorer(model, runtime, device=device)
        if scorer.runtime == "torch":  # torch is there already: its threads as every command sets them
            from ..device import configure_threads

            configure_threads()
        warm_up(scorer)
    except BaseException:
        listener.close()
        raise
    bound_port = listener.getsockname()[1]
    app = create_app(scorer, model_id=Path(model).name, token=token, limits=limits)
    access = ("a bearer token is needed (INSPECTION_API_TOKEN)" if token else
              f"no token: loopback only ({TOKEN_ENV} unset)")
    address = url(host, bound_port)
    print(f"serving {Path(model).name} ({scorer.name}, {scorer.runtime}) at {address} — POST /v1/inspect, docs at "
          f"{address}/docs; {access}; at most {limits.max_bytes / MB:.4g} MB a "
          f"request, {limits.workers} scored at once, {limits.queue} waiting", file=out, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
