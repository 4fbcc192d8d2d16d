"""Open what a user points at — a model file, or a folder made by `inspection export` — as a `Scorer`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ParameterError
from ..model.scorer import Scorer
from ..runtime import ENGINES, is_export, load_export

#: The engines a scorer can run on: the model itself in torch, or an exported folder's graph.
RUNTIMES = ("auto", "torch", *ENGINES)


def load_scorer(path: str | Path, runtime: str = "auto", device: str | None = None) -> Scorer:
    """A model file (torch) or an exported folder (onnxruntime or OpenVINO; "auto": `preferred_engine`). A model file
    asked to run on an exported runtime, or a folder asked to run in torch, is refused with what to do instead."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
    if is_export(path):
        if runtime == "torch":
            raise ParameterError(f"{path} is an exported folder: it runs on {' or '.join(ENGINES)}, not torch (give "
                                 "the model file for the torch runtime)")
        return load_export(path, runtime)
    if runtime not in ("auto", "torch"):
        raise ParameterError(f"{path} is a model file, which runs in torch; to run it on {runtime}, export it first: "
                             f"python -m inspection export --model {path} --format {runtime} --out DIR")
    from ..registry import load_model

    return load_model(path, device=device)
