"""The training form, built from a method's parameter declarations: one widget per parameter, grouped."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inspection.model.base import AnomalyModel
from inspection.params import Param

GROUP_TITLES = {"backbone": "Backbone", "method": "Method parameters", "preprocessing": "Preprocessing",
                "calibration": "Calibration and running"}
GROUP_ORDER = ("backbone", "method", "preprocessing", "calibration")


@dataclass(frozen=True)
class FieldSpec:
    """How one declared parameter is shown as a form widget."""

    name: str
    widget: str  # "checkbox" | "select" | "int" | "float" | "text"
    help: str
    default: Any
    options: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    note: str = ""  # what a special value means (shown in the label, or as a text box's placeholder)

    @property
    def label(self) -> str:
        name = self.name.replace("_", " ")
        return f"{name} ({self.note})" if self.note and self.widget != "text" else name


def _float_step(param: Param) -> float:
    """A step of about a tenth of the default's magnitude (0.01 of the range when the default is 0)."""
    reference = abs(float(param.default)) or (float(param.maximum) - float(param.minimum)
                                              if param.minimum is not None and param.maximum is not None else 1.0)
    return float(10 ** math.floor(math.log10(reference) - 1)) if reference > 0 else 0.01


def field_spec(param: Param) -> FieldSpec:
    """The widget for a parameter: a checkbox, a select box (choices), a number input, or a text box."""
    choices = param.choices
    if param.kind is bool:
        return FieldSpec(param.name, "checkbox", param.help, bool(param.default), note=param.note)
    if choices:
        return FieldSpec(param.name, "select", param.help, param.default, tuple(choices), note=param.note)
    if param.kind is int:
        return FieldSpec(param.name, "int", param.help, int(param.default), (),
                         None if param.minimum is None else int(math.ceil(param.minimum)),
                         None if param.maximum is None else int(math.floor(param.maximum)), 2 if param.odd else 1,
                         note=param.note)
    if param.kind is float:
        return FieldSpec(param.name, "float", param.help, float(param.default), (), param.minimum, param.maximum,
                         _float_step(param), note=param.note)
    return FieldSpec(param.name, "text", param.help, "" if param.default is None else str(param.default),
                     note=param.note)


def form_fields(method_cls: type[AnomalyModel]) -> dict[str, list[FieldSpec]]:
    """A method's parameters as form fields, grouped (backbone, method, preprocessing, calibration)."""
    groups: dict[str, list[FieldSpec]] = {}
    for param in method_cls.param_set():
        groups.setdefault(param.group, []).append(field_spec(param))
    ordered = {group: groups.pop(group) for group in GROUP_ORDER if group in groups}
    ordered.update(groups)  # any group a later method invents comes last
    return ordered


def resolve_form(method_cls: type[AnomalyModel], values: dict[str, Any]) -> dict[str, Any]:
    """Form values checked by the method's declarations — types, ranges, choices, odd, and the rules across
    parameters (e.g. resize >= crop, a GPU asked for on a machine without one) — without building a model."""
    known = set(method_cls.param_set().names())
    return method_cls.param_set().resolve({name: value for name, value in values.items() if name in known})
