"""The one place methods and backbones are found: the CLI, the app and the bench list them from here."""

from __future__ import annotations

import importlib
import os
from typing import Any

from .backbones import BACKBONES, BackboneSpec
from .base import AnomalyModel

METHODS: dict[str, type[AnomalyModel]] = {}

# Modules that register methods on import; adding a method means adding its module here, nothing else.
_METHOD_MODULES = ("inspection.patchcore", "inspection.padim")


def register_method(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: make a method available everywhere under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    METHODS[cls.name] = cls
    return cls


def _import_methods() -> None:
    for module in _METHOD_MODULES:
        importlib.import_module(module)


def methods() -> dict[str, type[AnomalyModel]]:
    _import_methods()
    return dict(METHODS)


def get_method(name: str) -> type[AnomalyModel]:
    _import_methods()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None


def backbones() -> dict[str, BackboneSpec]:
    return dict(BACKBONES)


def create_model(method: str, **params: Any) -> AnomalyModel:
    """A new, unfitted model of `method` with the given parameters (the rest at their defaults)."""
    return get_method(method)(**params)


def load_model(path: str | os.PathLike, device: str | None = None) -> AnomalyModel:
    """Load any saved model, whatever its method."""
    _import_methods()
    return AnomalyModel.load(path, device=device)
