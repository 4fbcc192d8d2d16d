"""Parameter declarations and the estimator contract.

A method declares each setting once, as an annotated class attribute (``sigma: float = setting(4.0, "…")``).
From those declarations come the method's constructor — keyword-only, typed, with its defaults, so that
``help(PatchCore)``, an IDE and a type checker see every parameter —, `get_params` / `set_params` / `clone` as in
scikit-learn, the CLI's options, the app's forms and the bench's settings; every value a user gives is checked
against them before any work starts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar, dataclass_transform

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

    def refuse_unknown(self, values: Mapping[str, Any]) -> None:
        """ParameterError naming the names in `values` that are not declared here."""
        unknown = sorted(set(values) - set(self.names()))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {unknown}; known: {self.names()}")

    def resolve(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with `values`, each coerced and checked, then the rules; unknown names are refused."""
        values = dict(values or {})
        self.refuse_unknown(values)
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


# --- the estimator contract ----------------------------------------------------------------------------------

#: The types a parameter may have, by the name its annotation gives (annotations are strings under
#: ``from __future__ import annotations``).
_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def setting(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
            choices: Iterable[Any] | None = None, odd: bool = False, group: str = "method", note: str = "") -> Any:
    """A parameter of an `Estimator`, declared as an annotated class attribute: ``sigma: float = setting(4.0,
    "Gaussian blur …", minimum=0.0)``. Its name and type come from the attribute; `help` says what it does and when
    to change it (shown in ``--help`` and beside the app's field)."""
    return Param("", object, default, help, minimum, maximum, tuple(choices) if choices is not None else None, odd,
                 group, note)


E = TypeVar("E", bound="Estimator")


@dataclass_transform(kw_only_default=True, field_specifiers=(setting,))
class Estimator:
    """A class whose parameters are declared with `setting`: a keyword-only constructor is generated from them (as
    `dataclasses` does), each value is coerced and checked by its declaration, and the values are attributes.

    Subclasses may change an inherited default (`default_overrides`), add checks over several parameters
    (`param_rules`), and adjust the declarations they inherit (`param_set`). What is not a parameter — learned
    state, helpers — is set up in ``__post_init__``.
    """

    #: Checks over several parameters together (e.g. resize >= crop), each class adding its own to its bases'.
    param_rules: ClassVar[tuple[Rule, ...]] = ()
    #: Defaults of inherited parameters that differ for this class (e.g. a network trained at 128 px: crop=128).
    default_overrides: ClassVar[dict[str, Any]] = {}
    #: This class's parameters in declaration order, its bases' first (filled in when the class is created).
    _declared: ClassVar[tuple[Param, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        annotations = inspect.get_annotations(cls)
        declared = {param.name: param for param in cls._declared}
        for name, value in list(vars(cls).items()):
            if isinstance(value, Param) and not value.name:
                annotation = annotations.get(name)
                kind = _KINDS.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
                if kind is None:
                    raise TypeError(f"{cls.__name__}.{name}: a parameter is annotated int, float, str or bool, "
                                    f"not {annotations.get(name)!r}")
                param = replace(value, name=name, kind=kind)
                declared[name] = replace(param, default=param.coerce(param.default))
                setattr(cls, name, declared[name].default)  # the class attribute holds the default, as in dataclasses
        cls._declared = tuple(declared.values())
        if "__init__" not in vars(cls):
            cls.__init__ = _generated_init(cls)  # type: ignore[method-assign]

    @classmethod
    def param_set(cls) -> ParamSet:
        """Every parameter with this class's defaults, and the checks over several of them."""
        rules = tuple(rule for klass in reversed(cls.__mro__) for rule in vars(klass).get("param_rules", ()))
        return ParamSet(cls._declared, rules).with_defaults(**cls.default_overrides)

    def __post_init__(self) -> None:
        """Set up what is not a parameter (learned state, helpers); called by the constructor after the values."""

    def get_params(self) -> dict[str, Any]:
        """Every parameter's value, by name (scikit-learn's contract; what a model file stores)."""
        return {param.name: getattr(self, param.name) for param in type(self).param_set()}

    def set_params(self: E, **values: Any) -> E:
        """Change parameters (each checked, and the rules over all of them); returns the estimator.

        As in scikit-learn, what a fitted estimator learned is kept: a value that only its scoring reads applies at
        once, while one that its fitting reads needs a new `fit`."""
        resolved = type(self).param_set().resolve({**self.get_params(), **values})
        for name, value in resolved.items():
            setattr(self, name, value)
        self._params_changed(set(values))
        return self

    def _params_changed(self, names: set[str]) -> None:
        """After `set_params`: bring what is derived from the parameters up to date."""

    def _set_declared(self, values: Mapping[str, Any]) -> None:
        """The generated constructor's body: every value checked, set as an attribute, then `__post_init__`."""
        for name, value in type(self).param_set().resolve(values).items():
            setattr(self, name, value)
        self.__post_init__()

    @classmethod
    def from_params(cls: type[E], values: Mapping[str, Any] | None = None) -> E:
        """A new estimator from a mapping of settings (a form, a file's header): names that are not parameters are
        refused with ParameterError, like wrong values, before anything is built."""
        values = dict(values or {})
        cls.param_set().refuse_unknown(values)
        return cls(**values)  # the constructor checks every value


def clone(estimator: E) -> E:
    """A new, unfitted estimator with the same parameters (scikit-learn's `clone`)."""
    return type(estimator)(**estimator.get_params())


def _generated_init(cls: type[Estimator]) -> Callable[..., None]:
    """``__init__(self, *, name: type = default, …)`` for every parameter of `cls`, generated as `dataclasses` does,
    so that its signature names and types them."""
    declared = cls.param_set().params
    defaults = {param.name: param.default for param in declared}
    arguments = ", ".join(f"{param.name}: {param.kind.__name__} = _defaults[{param.name!r}]" for param in declared)
    values = ", ".join(f"{param.name!r}: {param.name}" for param in declared)
    source = (f"def __init__(self{', *, ' + arguments if arguments else ''}) -> None:\n"
              f"    self._set_declared({{{values}}})\n")
    namespace: dict[str, Any] = {"_defaults": defaults}
    # Compiled apart from this module's `from __future__ import annotations`: the signature shows real types.
    exec(compile(source, f"<{cls.__name__}.__init__>", "exec", dont_inherit=True), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = (f"A new, unfitted {cls.__name__}. Every parameter is keyword-only and checked by its declaration "
                    f"(`{cls.__name__}.param_set()` describes each).")
    return init
