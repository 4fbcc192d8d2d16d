"""Parameter declarations: each method lists its settings once; the CLI and the app build forms from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Param:
    """One setting of a method: what it is called, its type, default, allowed range and a help text."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    group: str = "method"  # "method", "backbone", "preprocessing" or "calibration": for laying out forms

    def coerce(self, value: Any) -> Any:
        """Convert `value` to this parameter's type and check its range; raise ValueError saying what is allowed."""
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in {"true", "false", "1", "0", "yes", "no"}:
                        raise ValueError
                    converted: Any = lowered in {"true", "1", "yes"}
                else:
                    converted = bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                converted = int(value)
            elif self.kind is float:
                converted = float(value)
                if math.isnan(converted):
                    raise ValueError
            else:
                converted = "" if value is None else str(value)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {self.name!r} must be of type {self.kind.__name__}, got {value!r}") from None
        if self.choices is not None and converted not in self.choices:
            raise ValueError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {converted!r}")
        if self.minimum is not None and converted < self.minimum:
            raise ValueError(f"parameter {self.name!r} must be >= {self.minimum}, got {converted!r}")
        if self.maximum is not None and converted > self.maximum:
            raise ValueError(f"parameter {self.name!r} must be <= {self.maximum}, got {converted!r}")
        return converted

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (for forms and `--help`)."""
        described = asdict(self)
        described["kind"] = self.kind.__name__
        return described


@dataclass(frozen=True)
class ParamSet:
    """An ordered collection of Param with validation of user-given values."""

    params: tuple[Param, ...] = field(default_factory=tuple)

    def __iter__(self):
        return iter(self.params)

    def __add__(self, other: "ParamSet") -> "ParamSet":
        return ParamSet(self.params + other.params)

    def names(self) -> list[str]:
        return [param.name for param in self.params]

    def get(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {param.name: param.default for param in self.params}

    def resolve(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with `values`, each coerced and range-checked; unknown names are an error."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; known: {self.names()}")
        return {param.name: param.coerce(values.get(param.name, param.default)) for param in self.params}


def params(*items: Param | Iterable[Param]) -> ParamSet:
    """Build a ParamSet from Param objects and/or other ParamSets."""
    flat: list[Param] = []
    for item in items:
        if isinstance(item, Param):
            flat.append(item)
        else:
            flat.extend(item)
    names = [param.name for param in flat]
    duplicated = {name for name in names if names.count(name) > 1}
    if duplicated:
        raise ValueError(f"parameters declared twice: {sorted(duplicated)}")
    return ParamSet(tuple(flat))
