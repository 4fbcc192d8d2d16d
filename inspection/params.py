"""Parameter declarations: each method lists its settings once; the CLI, the app's forms and the bench are
built from them, and every value a user gives is checked against them before any work starts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ParameterError

#: A check of several parameters together (e.g. resize >= crop): raises ParameterError, returns nothing.
Rule = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Param:
    """One setting: its name, type, default, allowed values (range, choices, odd) and a help text."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    odd: bool = False  # ints only: the value must be odd (e.g. a kernel size)
    group: str = "method"  # "method", "backbone", "preprocessing" or "calibration": for laying out forms
    note: str = ""  # what a special value means, in a few words (e.g. "0 = keep all"), shown beside the field

    def coerce(self, value: Any) -> Any:
        """`value` converted to this parameter's type and checked; ParameterError saying what is allowed."""
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
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                converted = int(value)
            elif self.kind is float:
                converted = float(value)
                if not math.isfinite(converted):
                    raise ValueError
            else:
                converted = "" if value is None else str(value)
        except (TypeError, ValueError, OverflowError):
            raise ParameterError(f"parameter {self.name!r} must be of type {self.kind.__name__}, "
                                 f"got {value!r}") from None
        if self.choices is not None and converted not in self.choices:
            raise ParameterError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {converted!r}")
        if self.minimum is not None and converted < self.minimum:
            raise ParameterError(f"parameter {self.name!r} must be >= {self.minimum}, got {converted!r}")
        if self.maximum is not None and converted > self.maximum:
            raise ParameterError(f"parameter {self.name!r} must be <= {self.maximum}, got {converted!r}")
        if self.odd and converted % 2 == 0:
            raise ParameterError(f"parameter {self.name!r} must be odd, got {converted!r}")
        return converted

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (for forms and `--help`)."""
        return {"name": self.name, "kind": self.kind.__name__, "default": self.default, "help": self.help,
                "minimum": self.minimum, "maximum": self.maximum,
                "choices": list(self.choices) if self.choices is not None else None, "odd": self.odd,
                "group": self.group, "note": self.note}


@dataclass(frozen=True)
class ParamSet:
    """An ordered collection of Param, plus rules over several of them; validates user-given values."""

    params: tuple[Param, ...] = field(default_factory=tuple)
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __add__(self, other: ParamSet) -> ParamSet:
        return params(self, other)

    def names(self) -> list[str]:
        return [param.name for param in self.params]

    def get(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {param.name: param.default for param in self.params}

    def with_defaults(self, **defaults: Any) -> ParamSet:
        """The same declarations with other defaults (e.g. a method that works at 128 px sets crop=128)."""
        unknown = sorted(set(defaults) - set(self.names()))
        if unknown:
            raise ValueError(f"no such parameter(s) to give a default: {unknown}")
        changed = tuple(replace(param, default=param.coerce(defaults[param.name])) if param.name in defaults else param
                        for param in self.params)
        return ParamSet(changed, self.rules)

    def resolve(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with `values`, each coerced and checked, then the rules; unknown names are refused."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {unknown}; known: {self.names()}")
        resolved = {param.name: param.coerce(values.get(param.name, param.default)) for param in self.params}
        for rule in self.rules:
            rule(resolved)
        return resolved


def params(*items: Param | ParamSet | Iterable[Param], rules: Iterable[Rule] = ()) -> ParamSet:
    """A ParamSet from Param objects and/or other ParamSets (whose rules are kept), plus extra rules."""
    flat: list[Param] = []
    all_rules: list[Rule] = []
    for item in items:
        if isinstance(item, Param):
            flat.append(item)
        else:
            flat.extend(item)
            if isinstance(item, ParamSet):
                all_rules.extend(item.rules)
    names = [param.name for param in flat]
    duplicated = {name for name in names if names.count(name) > 1}
    if duplicated:
        raise ValueError(f"parameters declared twice: {sorted(duplicated)}")
    return ParamSet(tuple(flat), tuple(all_rules) + tuple(rules))
