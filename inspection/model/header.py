"""The model file's header, typed: the contract between fitting, saving, loading, evaluating and the app.

A model file is one safetensors file whose metadata has the single key ``inspection`` holding this header as
JSON. Every reader and writer goes through `ModelHeader`: `to_dict` writes it, `from_dict` reads it and checks
it as a whole — every field's presence, type, finiteness and range — so a damaged or hand-edited file is one
`ModelFileError` naming the field, never a traceback or a silently wrong verdict.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..data.preprocess import INTENSITY_MODES, NORMALIZATIONS, RESIZE_MODES, Preprocessing
from ..data.protocol import ALIGNED, AlignmentProtocol
from ..errors import ModelFileError
from .calibration import Calibration
from .fields import require_keys, require_mapping, require_number, require_numbers, require_text, require_texts

FORMAT = "inspection-model"
#: The header layout version this code writes and reads.
FORMAT_VERSION = 1


@dataclass
class BackboneRecord:
    """Which backbone, layers and weights (by fingerprint) a feature method was fitted with."""

    name: str
    layers: list[str]
    weights_source: str
    weights_normalization: str
    weights_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": list(self.layers),
                "weights": {"source": self.weights_source, "normalization": self.weights_normalization,
                            "fingerprint": self.weights_fingerprint}}

    @classmethod
    def from_dict(cls, values: Any, where: str = "backbone") -> BackboneRecord:
        values = require_mapping(values, where)
        require_keys(values, ("name", "layers", "weights"), where)
        weights = require_mapping(values["weights"], f"{where}.weights")
        require_keys(weights, ("source", "normalization", "fingerprint"), f"{where}.weights")
        return cls(require_text(values["name"], f"{where}.name"), require_texts(values["layers"], f"{where}.layers"),
                   require_text(weights["source"], f"{where}.weights.source"),
                   require_text(weights["normalization"], f"{where}.weights.normalization"),
                   require_text(weights["fingerprint"], f"{where}.weights.fingerprint"))


@dataclass
class ModelInfo:
    """What is known about a fitted model besides its settings: where and when it was made, how it did.

    Entries this version does not know (a user's own notes, say) are kept in `extra` and written back. Item
    access (``info["category"]``) works as on the plain dict of earlier versions.
    """

    display_name: str = ""
    created: str = ""  # ISO 8601, UTC
    n_fit_images: int = 0
    n_heldout_images: int = 0
    calibrated_on: str = ""
    fit_seconds: float = 0.0
    category: str = ""
    data_path: str = ""  # the dataset (category folder) it was fitted and evaluated on
    layout: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluate()'s metrics on the test split
    test_scores: list[dict[str, Any]] = field(default_factory=list)  # file, label, type, score per test image
    pixel_quantiles: dict[str, list[float]] = field(default_factory=dict)  # "good"/"defect" test pixel scores
    pixel_counts: dict[str, int] = field(default_factory=dict)  # how many pixels those quantiles summarise
    # The protocol its training images were under (`AlignmentProtocol.to_dict`; files without one: aligned).
    protocol: dict[str, Any] = field(default_factory=ALIGNED.to_dict)
    extra: dict[str, Any] = field(default_factory=dict)

    _KNOWN: ClassVar[tuple[str, ...]] = ()  # filled below: the typed fields' names

    # Item access, for scripts written against the plain dict of version 0.1.
    def __getitem__(self, key: str) -> Any:
        if key in self._KNOWN:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._KNOWN:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._KNOWN or key in self.extra

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def update(self, entries: Mapping[str, Any] = (), **more: Any) -> None:
        for key, value in {**dict(entries), **more}.items():
            self[key] = value

    def to_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self._KNOWN}
        return {**self.extra, **values}

    @classmethod
    def from_dict(cls, values: Any, where: str = "info") -> ModelInfo:
        values = require_mapping(values, where)
        info = cls(extra={key: value for key, value in values.items() if key not in cls._KNOWN})
        for key in ("display_name", "created", "calibrated_on", "category", "data_path", "layout"):
            if values.get(key) is not None:
                setattr(info, key, require_text(values[key], f"{where}.{key}"))
        for key in ("n_fit_images", "n_heldout_images"):
            if key in values:
                setattr(info, key, require_number(values[key], f"{where}.{key}", minimum=0, integer=True))
        if "fit_seconds" in values:
            info.fit_seconds = require_number(values["fit_seconds"], f"{where}.fit_seconds", minimum=0)
        info.metrics = require_mapping(values.get("metrics") or {}, f"{where}.metrics")
        records = values.get("test_scores") or []
        if not isinstance(records, list):
            raise ModelFileError(f"field '{where}.test_scores' must be a list, got {type(records).__name__}")
        info.test_scores = [_test_score(record, f"{where}.test_scores[{index}]")
                            for index, record in enumerate(records)]
        quantiles = require_mapping(values.get("pixel_quantiles") or {}, f"{where}.pixel_quantiles")
        info.pixel_quantiles = {str(key): require_numbers(value, f"{where}.pixel_quantiles.{key}")
                                for key, value in quantiles.items()}
        counts = require_mapping(values.get("pixel_counts") or {}, f"{where}.pixel_counts")
        info.pixel_counts = {str(key): require_number(value, f"{where}.pixel_counts.{key}", minimum=0, integer=True)
                             for key, value in counts.items()}
        if values.get("protocol") is not None:
            info.protocol = require_mapping(values["protocol"], f"{where}.protocol")
            try:
                AlignmentProtocol.from_dict(info.protocol)
            except ValueError as error:
                raise ModelFileError(f"field '{where}.protocol': {error}") from None
        return info

    def alignment_protocol(self) -> AlignmentProtocol:
        """The protocol the model was fitted under."""
        return AlignmentProtocol.from_dict(self.protocol)


ModelInfo._KNOWN = tuple(item.name for item in fields(ModelInfo) if item.name != "extra")


def _test_score(record: Any, where: str) -> dict[str, Any]:
    record = require_mapping(record, where)
    require_keys(record, ("score", "label"), where)
    label = require_number(record["label"], f"{where}.label", integer=True)
    if label not in (0, 1):
        raise ModelFileError(f"field '{where}.label' must be 0 (good) or 1 (defect), got {label!r}")
    return {"file": require_text(record.get("file", ""), f"{where}.file"), "label": label,
            "type": require_text(record.get("type", ""), f"{where}.type"),
            "score": require_number(record["score"], f"{where}.score")}


def preprocessing_from_dict(values: Any, where: str = "preprocessing") -> Preprocessing:
    """A Preprocessing from a header, every field checked."""
    values = require_mapping(values, where)
    require_keys(values, ("mode", "resize", "crop", "normalization"), where)
    choices = {"mode": RESIZE_MODES, "normalization": tuple(NORMALIZATIONS), "intensity": INTENSITY_MODES}
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ModelFileError(f"field '{where}.{key}' must be one of {list(allowed)}, got {values[key]!r}")
    unknown = sorted(set(values) - {"mode", "resize", "crop", "normalization", "intensity", "multiple", "tile_overlap"})
    if unknown:
        raise ModelFileError(f"field {where!r} has unknown entries {unknown}")
    try:
        return Preprocessing(values["mode"], require_number(values["resize"], f"{where}.resize", integer=True),
                             require_number(values["crop"], f"{where}.crop", integer=True), values["normalization"],
                             values.get("intensity", "none"),
                             require_number(values.get("multiple", 32), f"{where}.multiple", integer=True),
                             require_number(values.get("tile_overlap", 32), f"{where}.tile_overlap", integer=True))
    except ValueError as error:
        raise ModelFileError(f"field {where!r}: {error}") from None


@dataclass
class ModelHeader:
    """Everything a model file holds besides its learned tensors."""

    method: str
    params: dict[str, Any]  # the method's parameters, as resolved by its declarations
    preprocessing: Preprocessing
    seed: int
    package_version: str
    calibration: Calibration | None = None
    info: ModelInfo = field(default_factory=ModelInfo)
    backbone: BackboneRecord | None = None  # feature methods only

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "method": self.method,
            "package_version": self.package_version, "params": dict(self.params),
            "preprocessing": self.preprocessing.to_dict(), "seed": self.seed,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "info": self.info.to_dict()}
        if self.backbone is not None:
            values["backbone"] = self.backbone.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Any) -> ModelHeader:
        """A header read from a file, checked as a whole (ModelFileError naming the first wrong field)."""
        values = require_mapping(values, "header")
        if values.get("format") != FORMAT:
            raise ModelFileError("not a model file of this tool")
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(f"model file format version {version!r} is not supported by this version "
                                 f"(expects {FORMAT_VERSION}); retrain the model")
        require_keys(values, ("method", "params", "preprocessing", "calibration"), "header")
        if values["calibration"] is None:
            # Every saved model was calibrated when it was fitted: without thresholds it cannot decide anything.
            raise ModelFileError("field 'calibration' is empty: the model has no thresholds; retrain it")
        return cls(
            method=require_text(values["method"], "method"),
            params=require_mapping(values["params"], "params"),
            preprocessing=preprocessing_from_dict(values["preprocessing"]),
            seed=require_number(values.get("seed", 0), "seed", minimum=0, integer=True),
            package_version=require_text(values.get("package_version", ""), "package_version"),
            calibration=Calibration.from_dict(values["calibration"]),
            info=ModelInfo.from_dict(values.get("info") or {}),
            backbone=BackboneRecord.from_dict(values["backbone"]) if values.get("backbone") is not None else None)
