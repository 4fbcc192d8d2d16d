"""One model file: safetensors tensors plus the JSON header (settings, calibration, metadata).

The header lives in the safetensors metadata, so reading it never touches the weights, and loading never
runs code (no pickle). Every write goes to a temporary file in the same folder, then is renamed over the
target, so an interrupted write never leaves a half-written model. Beside the raw reading and writing, the
operations on saved models live here: their typed header, new thresholds, new metadata.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelFileError
from .header import FORMAT, FORMAT_VERSION, ModelHeader

MODEL_SUFFIX = ".safetensors"
_HEADER_KEY = "inspection"
_MAX_HEADER_BYTES = 100 * 1024 * 1024

__all__ = ["FORMAT", "FORMAT_VERSION", "MODEL_SUFFIX", "ModelFileError", "write_model_file", "read_header",
           "read_model_file", "update_header", "resolve_model_path", "read_model_header", "read_model_info",
           "save_thresholds", "update_info", "rewrite_header"]


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The model file a user means: the path itself, or the path with the model suffix added (as `fit` wrote it)."""
    path = Path(path).expanduser()
    if path.suffix != MODEL_SUFFIX and not path.is_file():
        with_suffix = path.with_name(path.name + MODEL_SUFFIX)
        if with_suffix.is_file():
            return with_suffix
    return path


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
    """The header as stored (JSON), read from the first bytes of the file; the tensors are not loaded."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError:
        raise ModelFileError(f"model file {str(path)!r} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{str(path)!r} is not a regular file (a folder, pipe or device): not a model file")
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 0 < length <= _MAX_HEADER_BYTES:
                raise ValueError("bad header length")
            raw = json.loads(handle.read(length))
        header = json.loads(raw["__metadata__"][_HEADER_KEY])
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ModelFileError(f"{path.name}: not a model file of this tool (or damaged): {reason}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path.name}: not a model file of this tool")
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path.name}: model file format version {header.get('format_version')} is not "
                             f"supported by this version (expects {FORMAT_VERSION}); retrain the model")
    return header


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and stored header of a model file."""
    header = read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise ModelFileError(f"{Path(path).name}: cannot read the model's tensors: {error}") from error
    return tensors, header


def update_header(path: str | os.PathLike, update: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Rewrite a model file with `update(header)` as its stored header; atomic, tensors unchanged."""
    tensors, header = read_model_file(path)
    new_header = update(header)
    write_model_file(path, tensors, new_header)
    return new_header


# ----------------------------------------------------------------------------------------------------------
# Typed operations on saved models


def parse_header(path: str | os.PathLike, stored: dict[str, Any]) -> ModelHeader:
    """The typed header of a stored one; ModelFileError naming the file and the wrong field."""
    try:
        return ModelHeader.from_dict(stored)
    except ModelFileError as error:
        raise ModelFileError(f"{Path(path).name}: {error}") from None


def read_model_header(path: str | os.PathLike) -> ModelHeader:
    """A model file's typed header, checked as a whole, without loading its weights."""
    path = resolve_model_path(path)
    return parse_header(path, read_header(path))


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's header (settings, calibration, metadata) as a checked JSON dict, weights not loaded."""
    return read_model_header(path).to_dict()


def rewrite_header(path: str | os.PathLike, change: Callable[[ModelHeader], None]) -> ModelHeader:
    """Rewrite a model file with `change(header)` applied to its typed header; atomic, tensors unchanged."""
    path = resolve_model_path(path)
    tensors, stored = read_model_file(path)
    header = parse_header(path, stored)
    change(header)
    write_model_file(path, tensors, header.to_dict())
    return header


def save_thresholds(path: str | os.PathLike, image_threshold: float | None = None,
                    pixel_threshold: float | None = None) -> ModelHeader:
    """Rewrite a model file's thresholds (raw units), chosen by hand, atomically: the score scales re-anchored so
    that they show the new thresholds at 0.5, each new threshold marked as set by hand with what it keeps on the
    held-out good images (`Calibration.set_by_hand`); returns the new header."""
    for name, value in (("image threshold", image_threshold), ("pixel threshold", pixel_threshold)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")

    def change(header: ModelHeader) -> None:
        if header.calibration is None:
            raise ModelFileError(f"{Path(path).name} has no calibration to update")
        # The scales move with the thresholds: a saved threshold is always shown at 0.5, on every page; the file
        # states what the new threshold does, never the target of the one it replaces.
        header.calibration = header.calibration.set_by_hand(image_threshold, pixel_threshold)

    return rewrite_header(path, change)


def update_info(path: str | os.PathLike, **entries: Any) -> ModelHeader:
    """Merge entries into a model file's metadata (e.g. a new display name) atomically."""
    return rewrite_header(path, lambda header: header.info.update(entries))
