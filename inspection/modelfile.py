"""One model file: safetensors tensors plus a JSON header (settings, calibration, metadata).

The header lives in the safetensors metadata, so reading it never touches the weights, and loading never
runs code (no pickle). Every write goes to a temporary file in the same folder, then is renamed over the
target, so an interrupted write never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

FORMAT = "inspection-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
_HEADER_KEY = "inspection"
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class ModelFileError(ValueError):
    """A model file is missing, not ours, of an unsupported version, or damaged."""


def write_model_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> Path:
    """Write tensors and header atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **header}
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(contiguous, temporary, metadata={_HEADER_KEY: json.dumps(header, allow_nan=True)})
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary behind
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header alone, read from the first bytes of the file (the tensors are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 0 < length <= _MAX_HEADER_BYTES:
                raise ValueError("bad header length")
            raw = json.loads(handle.read(length))
        header = json.loads(raw["__metadata__"][_HEADER_KEY])
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise ModelFileError(f"{path.name}: not a model file of this tool (or damaged): {error}") from error
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{path.name}: not a model file of this tool")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path.name}: model file format version {header.get('format_version')} is not "
                             f"supported by this version (expects {FORMAT_VERSION}); retrain the model")
    return header


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    header = read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"{Path(path).name}: cannot read the model's tensors: {error}") from error
    return tensors, header


def update_header(path: str | os.PathLike, update: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Rewrite a model file with `update(header)` as its header; atomic, tensors unchanged."""
    tensors, header = read_model_file(path)
    new_header = update(header)
    write_model_file(path, tensors, new_header)
    return new_header
