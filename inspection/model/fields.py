"""Reading typed values out of a model file: header fields and learned tensors; each wrong one is an error naming it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ModelFileError

if TYPE_CHECKING:  # the torch-free runtime reads the header checks of this module
    import torch


def require_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelFileError(f"field {where!r} must be an object, got {type(value).__name__}")
    return dict(value)


def require_keys(values: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in values]
    if missing:
        raise ModelFileError(f"field {where!r} lacks {', '.join(repr(key) for key in missing)}")


def require_no_other_keys(values: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ModelFileError(f"field {where!r} has unknown entries {unknown}")


def require_number(value: Any, where: str, *, minimum: float | None = None, allow_none: bool = False,
                   integer: bool = False) -> Any:
    """A finite number (an int when `integer`), at least `minimum`; None only when `allow_none`."""
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an integer" if integer else "a number"
        raise ModelFileError(f"field {where!r} must be {expected}, got {value!r}")
    if not math.isfinite(value):
        raise ModelFileError(f"field {where!r} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ModelFileError(f"field {where!r} must be >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def require_numbers(value: Any, where: str) -> list[float]:
    """A list of finite numbers."""
    if not isinstance(value, list):
        raise ModelFileError(f"field {where!r} must be a list of numbers, got {type(value).__name__}")
    return [require_number(item, f"{where}[{index}]") for index, item in enumerate(value)]


def require_text(value: Any, where: str, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ModelFileError(f"field {where!r} must be text, got {value!r}")
    return value


def require_texts(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise ModelFileError(f"field {where!r} must be a list of texts, got {type(value).__name__}")
    return [require_text(item, f"{where}[{index}]") for index, item in enumerate(value)]


def require_tensor(state: Mapping[str, Any], name: str, *, ndim: int | None = None,
                   integer: bool = False) -> torch.Tensor:
    """A learned tensor of a model file: present, of the right kind (float, or integer), finite, `ndim`-dimensional.

    Never cast silently: an integer memory bank, say, would give other scores than the one that was saved.
    """
    import torch

    tensor = state.get(name)
    if not isinstance(tensor, torch.Tensor):
        raise ModelFileError(f"the model's tensors lack {name!r}")
    kind_ok = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool) if integer \
        else tensor.is_floating_point()
    if not kind_ok:
        expected = "integers" if integer else "floating-point numbers"
        raise ModelFileError(f"tensor {name!r} holds {tensor.dtype}, expected {expected}")
    if ndim is not None and tensor.ndim != ndim:
        raise ModelFileError(f"tensor {name!r} has {tensor.ndim} dimensions {tuple(tensor.shape)}, expected {ndim}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ModelFileError(f"tensor {name!r} holds NaN or infinite values")
    return tensor
