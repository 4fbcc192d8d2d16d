"""Choosing the torch device: the GPU when there is one, the CPU otherwise, always overridable."""

from __future__ import annotations

import functools

import torch

from .errors import ParameterError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" (or None) into cuda when available, else cpu; validate an explicit choice."""
    return _resolve(str(device) if device is not None else "auto")


@functools.lru_cache(maxsize=16)
def _resolve(device: str) -> torch.device:
    # Cached: asking the driver whether a GPU is there costs time, and models ask on every batch.
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ParameterError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} was asked for, but no CUDA GPU is available here: use 'cpu' or 'auto'")
    return resolved


def describe_device(device: torch.device) -> str:
    """A short human-readable name, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
