"""The one place methods and backbones are found: the CLI, the app and the bench list them from here.

Methods are discovered, not listed: every module in the `inspection.methods` package (every folder of its
``__path__``) is imported, and each `AnomalyModel` subclass that states a registry name in its own class body
(``name = "padim"``) is a method. A new method is one new file in that folder; nothing else changes.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

from . import methods as method_package
from .errors import ModelFileError, ParameterError
from .features.backbones import BACKBONES, BackboneSpec
from .model.base import AnomalyModel
from .model.modelfile import read_model_header, resolve_model_path

_DISCOVERED: dict[str, type[AnomalyModel]] = {}


def _discover() -> dict[str, type[AnomalyModel]]:
    found: dict[str, type[AnomalyModel]] = {}
    for module_info in sorted(pkgutil.iter_modules(method_package.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{method_package.__name__}.{module_info.name}")
        for value in vars(module).values():
            declared = isinstance(value, type) and issubclass(value, AnomalyModel) and value.__module__ == \
                module.__name__ and isinstance(vars(value).get("name"), str) and value.name
            if not declared:
                continue
            if value.name in found and found[value.name] is not value:
                raise RuntimeError(f"two methods are named {value.name!r}: {found[value.name].__module__} and "
                                   f"{module.__name__}")
            found[value.name] = value
    return found


def refresh() -> None:
    """Forget the methods found so far: the next call looks at the methods folder again."""
    _DISCOVERED.clear()


def methods() -> dict[str, type[AnomalyModel]]:
    """Every method, by registry name (sorted)."""
    if not _DISCOVERED:
        _DISCOVERED.update(_discover())
    return dict(_DISCOVERED)


def get_method(name: str) -> type[AnomalyModel]:
    """The method class registered under `name`; ParameterError listing the known ones when there is none."""
    found = methods()
    try:
        return found[name]
    except KeyError:
        raise ParameterError(f"unknown method {name!r}; available: {', '.join(found)}") from None


def backbones() -> dict[str, BackboneSpec]:
    """Every backbone a feature method can use, by name."""
    return dict(BACKBONES)


def create_model(method: str, **params: Any) -> AnomalyModel:
    """A new, unfitted model of `method` with the given parameters (the rest at their defaults); names that are not
    the method's parameters are refused with ParameterError, as wrong values are."""
    return get_method(method).from_params(params)


def load_model(path: str | os.PathLike, device: str | None = None) -> AnomalyModel:
    """Load any saved model, whatever its method (the file's header says which)."""
    path = resolve_model_path(path)
    header = read_model_header(path)
    try:
        method_cls = get_method(header.method)
    except ParameterError:
        raise ModelFileError(f"{path.name} holds a model of method {header.method!r}, unknown to this version "
                             f"(known: {', '.join(methods())})") from None
    return method_cls.load(path, device=device)
