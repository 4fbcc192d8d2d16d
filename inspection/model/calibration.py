"""Calibration: the thresholds a model decides with, and the fixed scale its scores are shown on.

Both come from good images the model did not fit (a seeded held-out share of the training images): the image
threshold by the split-conformal rule, which promises at most the target FPR on new good images; the pixel
threshold at a target number of false regions per good image (or,
by choice, a target pixel FPR); and one affine normalisation per level. The normalisation always puts the
current threshold at 0.5: saving a new threshold moves the scale with it, so every page, picture and file
shows 0.5 where the model decides. A threshold saved by hand (the Threshold page) is marked so ("manual"), and
what the file states of it is what it does on the held-out good images, not the target of fit.

The verdict has one rule, `Calibration.is_defect`: an image is a defect iff its raw score > the image threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import ModelFileError
from ..scores.thresholds import (
    ConformalPromise,
    ScoreScale,
    conformal_threshold,
    pixel_threshold_at_fpr,
    promise_at_threshold,
    rate_above,
    score_quantiles,
    threshold_at_false_regions,
    validate_fpr,
)
from .fields import (
    require_keys,
    require_mapping,
    require_no_other_keys,
    require_number,
    require_numbers,
    require_text,
    require_texts,
)

#: The colour scale's top when a model was not evaluated on defects (twice as far from calm as the threshold).
DEFAULT_COLOUR_MAX = 2.0

#: How a threshold was set: "manual" is a person's choice, saved by hand.
MANUAL = "manual"
#: The image rules: split-conformal at the target FPR; the empirical quantile of files of 0.1; by hand.
IMAGE_RULES = ("conformal", "empirical", MANUAL)
#: The pixel rules: false regions per good image; a pixel FPR (files of 0.1 too); by hand.
PIXEL_RULES = ("false_regions", "pixel_fpr", MANUAL)
#: What a recalibration replaces besides the thresholds and the calibration set, and its undo brings back.
RULE_FIELDS = ("image_rule", "image_fpr", "image_promise", "pixel_rule", "pixel_fpr", "false_regions")


@dataclass
class Calibration:
    """Thresholds (raw score units; defect iff score > threshold: `is_defect`) and the fixed score normalisation.

    `image_fpr` / `pixel_fpr` state what the saved thresholds keep: the target they were set for by their rule, or,
    for a threshold set by hand, the held-out good images' (pixels') rate above it. The target asked at fit stays
    the model's setting (`params["image_fpr"]`); the two differ once a threshold is saved by hand.
    """

    image_threshold: float
    pixel_threshold: float
    image_fpr: float
    pixel_fpr: float
    image_scale: ScoreScale
    pixel_scale: ScoreScale
    heldout_scores: list[float] = field(default_factory=list)
    heldout_files: list[str] = field(default_factory=list)
    heldout_pixel_quantiles: list[float] = field(default_factory=list)
    f1_image_threshold: float | None = None
    f1_pixel_threshold: float | None = None
    #: How the pixel threshold was chosen: "false_regions" (per good image), "pixel_fpr" (files of 0.1 too) or
    #: "manual" (saved by hand; `pixel_fpr` is then the held-out good pixels' rate above it).
    pixel_rule: str = "pixel_fpr"
    false_regions: float | None = None
    #: The scores shown as 0: the lowest held-out image score, the median held-out pixel (a calm surface).
    image_reference: float | None = None
    pixel_reference: float | None = None
    #: The top of the heatmaps' colour scale (raw): a high quantile of the test split's defect pixels.
    pixel_display_max: float | None = None
    #: How the image threshold was chosen ("conformal"; "empirical" in files of 0.1; "manual": saved by hand), and
    #: what it promises on new good parts.
    image_rule: str = "empirical"
    image_promise: str = ""
    #: Thresholds replaced by a recalibration, oldest first: {"image_threshold", "pixel_threshold", "replaced",
    #: "reason", the calibration set and the RULE_FIELDS} each, so that a recalibration can be undone.
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_good(cls, image_scores: np.ndarray, maps: np.ndarray, image_fpr: float, pixel_fpr: float,
                  files: Sequence[str] = (), pixel_rule: str = "false_regions",
                  false_regions: float = 0.1) -> Calibration:
        """Thresholds and scales from the scores and maps of held-out good images."""
        conformal = conformal_threshold(image_scores, image_fpr)
        image_threshold = conformal.threshold
        if pixel_rule == "false_regions":
            pixel_threshold = threshold_at_false_regions(maps, false_regions)
        elif pixel_rule == "pixel_fpr":
            pixel_threshold = pixel_threshold_at_fpr(maps, pixel_fpr)
        else:
            raise ValueError(f"unknown pixel threshold rule {pixel_rule!r}")
        image_reference, pixel_reference = float(np.min(image_scores)), float(np.nanmedian(maps))
        return cls(image_threshold, pixel_threshold, image_fpr, pixel_fpr,
                   ScoreScale.from_reference(image_reference, image_threshold),
                   ScoreScale.from_reference(pixel_reference, pixel_threshold),
                   [float(score) for score in image_scores], list(files), score_quantiles(maps),
                   pixel_rule=pixel_rule, false_regions=false_regions if pixel_rule == "false_regions" else None,
                   image_reference=image_reference, pixel_reference=pixel_reference, image_rule="conformal",
                   image_promise=conformal.describe())

    def is_defect(self, raw_scores: Any, *, threshold: float | None = None) -> Any:
        """The verdict, the one rule of the project: defect iff raw score > the image threshold (a score exactly
        at it is good; NaN is good). A float gives a bool, an array a bool array. `threshold` asks what another raw
        image threshold would decide (the Threshold page's choice), by the same rule."""
        limit = self.image_threshold if threshold is None else float(threshold)
        flagged = np.greater(raw_scores, limit)
        return bool(flagged) if np.ndim(flagged) == 0 else flagged

    def with_thresholds(self, image_threshold: float | None = None,
                        pixel_threshold: float | None = None) -> Calibration:
        """The same calibration with new thresholds (raw units), its scales moved so they show them at 0.5; rules
        and targets untouched (`set_by_hand` restates them for a person's choice)."""
        image = self.image_threshold if image_threshold is None else float(image_threshold)
        pixel = self.pixel_threshold if pixel_threshold is None else float(pixel_threshold)
        image_reference = self.image_scale.offset if self.image_reference is None else self.image_reference
        pixel_reference = self.pixel_scale.offset if self.pixel_reference is None else self.pixel_reference
        with warnings.catch_warnings():
            # A threshold at or below the calm reference still gets a scale with the threshold at 0.5.
            warnings.simplefilter("ignore", RuntimeWarning)
            image_scale = ScoreScale.from_reference(image_reference, image)
            pixel_scale = ScoreScale.from_reference(pixel_reference, pixel)
        return replace(self, image_threshold=image, pixel_threshold=pixel, image_scale=image_scale,
                       pixel_scale=pixel_scale, image_reference=image_reference, pixel_reference=pixel_reference)

    def set_by_hand(self, image_threshold: float | None = None,
                    pixel_threshold: float | None = None) -> Calibration:
        """Thresholds a person chose (raw units), saved as what they are: rule "manual", the stated FPR the held-out
        good images' (pixels') rate above the new threshold, the image promise the split-conformal one at it —
        never the target of the threshold it replaces. A level not given is kept as it is."""
        changes: dict[str, Any] = {}
        if image_threshold is not None:
            if not self.heldout_scores:
                raise ValueError("the model file has no held-out good scores to state what a threshold set by hand "
                                 "keeps: retrain it")
            promise = promise_at_threshold(self.heldout_scores, float(image_threshold))
            changes.update(image_rule=MANUAL, image_fpr=promise.heldout_fpr,
                           image_promise=f"set by hand; {promise.describe()}")
        if pixel_threshold is not None:
            if not self.heldout_pixel_quantiles:
                raise ValueError("the model file has no held-out pixel scores to state what a pixel threshold set by "
                                 "hand keeps: retrain it")
            changes.update(pixel_rule=MANUAL, pixel_fpr=float(rate_above(self.heldout_pixel_quantiles,
                                                                         float(pixel_threshold))),
                           false_regions=None)
        return replace(self.with_thresholds(image_threshold, pixel_threshold), **changes)

    # --- file form --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["image_scale"] = self.image_scale.to_dict()
        values["pixel_scale"] = self.pixel_scale.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Any, where: str = "calibration") -> Calibration:
        """The calibration of a model file's header, every field checked (ModelFileError naming the field)."""
        values = require_mapping(values, where)
        required = ("image_threshold", "pixel_threshold", "image_fpr", "pixel_fpr", "image_scale", "pixel_scale")
        require_keys(values, required, where)
        require_no_other_keys(values, tuple(cls.__dataclass_fields__), where)
        numbers = {key: require_number(values[key], f"{where}.{key}") for key in required[:4]}
        image_rule = _require_rule(values.get("image_rule", "empirical"), IMAGE_RULES, f"{where}.image_rule")
        pixel_rule = _require_rule(values.get("pixel_rule", "pixel_fpr"), PIXEL_RULES, f"{where}.pixel_rule")
        for key, rule in (("image_fpr", image_rule), ("pixel_fpr", pixel_rule)):
            _require_rate(numbers[key], rule, f"{where}.{key}")
        scales = {}
        for key in ("image_scale", "pixel_scale"):
            scale = require_mapping(values[key], f"{where}.{key}")
            require_keys(scale, ("offset", "scale"), f"{where}.{key}")
            offset = require_number(scale["offset"], f"{where}.{key}.offset")
            factor = require_number(scale["scale"], f"{where}.{key}.scale")
            if factor <= 0:
                raise ModelFileError(f"field '{where}.{key}.scale' must be > 0, got {factor!r}")
            scales[key] = ScoreScale(offset, factor)
        optional = {key: require_number(values.get(key), f"{where}.{key}", allow_none=True)
                    for key in ("false_regions", "image_reference", "pixel_reference", "pixel_display_max")}
        history = values.get("history", [])
        if not isinstance(history, list):
            raise ModelFileError(f"field '{where}.history' must be a list, got {type(history).__name__}")
        history = [_history_entry(entry, f"{where}.history[{index}]") for index, entry in enumerate(history)]
        return cls(**numbers, **scales, pixel_rule=pixel_rule, **optional, image_rule=image_rule,
                   image_promise=require_text(values.get("image_promise", ""), f"{where}.image_promise"),
                   history=history,
                   heldout_scores=require_numbers(values.get("heldout_scores", []), f"{where}.heldout_scores"),
                   heldout_files=require_texts(values.get("heldout_files", []), f"{where}.heldout_files"),
                   heldout_pixel_quantiles=require_numbers(values.get("heldout_pixel_quantiles", []),
                                                           f"{where}.heldout_pixel_quantiles"),
                   f1_image_threshold=require_number(values.get("f1_image_threshold"), f"{where}.f1_image_threshold",
                                                     allow_none=True),
                   f1_pixel_threshold=require_number(values.get("f1_pixel_threshold"), f"{where}.f1_pixel_threshold",
                                                     allow_none=True))

    # --- reading --------------------------------------------------------------------------------------

    def recalibrated(self, image_threshold: float, pixel_threshold: float, reason: str, image_promise: str,
                     good_scores: Sequence[float], good_files: Sequence[str],
                     pixel_quantiles: Sequence[float], **rules: Any) -> Calibration:
        """New thresholds from new good images, which become the calibration set; `rules` are the RULE_FIELDS they
        were set by (the current ones by default). The current thresholds, set and rules go into the history, so
        that `undone` brings them back exactly."""
        unknown = set(rules) - set(RULE_FIELDS)
        if unknown:
            raise ValueError(f"unknown calibration rule fields {sorted(unknown)}")
        entry = {"image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold,
                 "replaced": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason,
                 "heldout_scores": list(self.heldout_scores), "heldout_files": list(self.heldout_files),
                 "heldout_pixel_quantiles": list(self.heldout_pixel_quantiles),
                 **{key: getattr(self, key) for key in RULE_FIELDS}}
        return replace(self.with_thresholds(image_threshold, pixel_threshold), history=[*self.history, entry],
                       **{**rules, "image_promise": image_promise},
                       heldout_scores=[float(score) for score in good_scores], heldout_files=list(good_files),
                       heldout_pixel_quantiles=list(pixel_quantiles))

    def undone(self) -> Calibration:
        """The thresholds, calibration set and rules before the last recalibration (ValueError when there was
        none). Entries of files that did not record the rules leave the current ones, which they did not change."""
        if not self.history:
            raise ValueError("the model was never recalibrated: there is nothing to undo")
        previous = self.history[-1]
        return replace(self.with_thresholds(previous["image_threshold"], previous["pixel_threshold"]),
                       history=self.history[:-1], heldout_scores=previous["heldout_scores"],
                       heldout_files=previous["heldout_files"],
                       heldout_pixel_quantiles=previous["heldout_pixel_quantiles"],
                       **{key: previous[key] for key in RULE_FIELDS if key in previous})

    @property
    def image_set_by_hand(self) -> bool:
        return self.image_rule == MANUAL

    @property
    def pixel_set_by_hand(self) -> bool:
        return self.pixel_rule == MANUAL

    @property
    def image_target_fpr(self) -> float:
        """The false-alarm rate on new good parts the saved image threshold stands for: its rule's target, or, for a
        threshold set by hand (which had none), the split-conformal promise at it."""
        return self.image_promise_at().promised_fpr if self.image_set_by_hand else self.image_fpr

    def image_promise_at(self, image_threshold: float | None = None) -> ConformalPromise:
        """The split-conformal promise on new good parts at a raw threshold (the saved one by default), from the
        held-out good images."""
        return promise_at_threshold(self.heldout_scores,
                                    self.image_threshold if image_threshold is None else image_threshold)

    def describe_image_threshold(self) -> str:
        """How the saved image threshold was set and what it promises on new good parts, in words."""
        if self.image_promise:
            return self.image_promise
        if self.image_rule == "empirical":
            return f"set on the held-out good images, at most {self.image_fpr:.1%} of them above it"
        return "set on the held-out good images"

    def describe_pixel_threshold(self) -> str:
        """How the saved pixel threshold was set and what it keeps on the held-out good images, in words."""
        if self.pixel_set_by_hand:
            return f"set by hand; {self.pixel_fpr:.2%} of the held-out good pixels above it"
        if self.pixel_rule == "false_regions" and self.false_regions is not None:
            return (f"at most {self.false_regions:g} false defect regions per good image on average (on the "
                    "held-out good images)")
        return f"at most {self.pixel_fpr:.2%} of the held-out good pixels above it"

    @property
    def normalized_image_threshold(self) -> float:
        return float(self.image_scale.normalize(self.image_threshold))

    @property
    def normalized_pixel_threshold(self) -> float:
        return float(self.pixel_scale.normalize(self.pixel_threshold))

    @property
    def colour_max(self) -> float:
        """The top of the heatmaps' colour scale on the model's scale (threshold 0.5): at least 1; 2 when unknown."""
        if self.pixel_display_max is None:
            return DEFAULT_COLOUR_MAX
        return max(1.0, float(self.pixel_scale.normalize(self.pixel_display_max)))

    def heldout_fpr(self, image_threshold: float | None = None) -> float:
        """Image FPR measured on the held-out good images at a threshold (the saved one by default)."""
        scores = np.asarray(self.heldout_scores, dtype=np.float64)
        return float(np.mean(self.is_defect(scores, threshold=image_threshold))) if scores.size else float("nan")

    def heldout_pixel_fpr(self, pixel_threshold: float | None = None) -> float:
        """Pixel FPR on the held-out good images at a threshold (from their saved score quantiles)."""
        threshold = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        return rate_above(self.heldout_pixel_quantiles, threshold)


def _require_rule(value: Any, rules: tuple[str, ...], where: str) -> str:
    if value not in rules:
        raise ModelFileError(f"field '{where}' must be one of {', '.join(map(repr, rules))}, got {value!r}")
    return value


def _require_rate(value: float, rule: str, where: str) -> float:
    """A target FPR in (0, 1); for a threshold set by hand, the measured rate above it: 0 to 1."""
    if rule == MANUAL:
        if not 0.0 <= value <= 1.0:
            raise ModelFileError(f"field '{where}' must be a rate between 0 and 1 (the threshold was set by hand), "
                                 f"got {value!r}")
        return value
    try:
        return validate_fpr(value)
    except ValueError as error:
        raise ModelFileError(f"field '{where}': {error}") from None


def _history_rules(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The rules a history entry recorded (entries of earlier files record none)."""
    rules: dict[str, Any] = {}
    if "image_rule" in values:
        rules["image_rule"] = _require_rule(values["image_rule"], IMAGE_RULES, f"{where}.image_rule")
    if "pixel_rule" in values:
        rules["pixel_rule"] = _require_rule(values["pixel_rule"], PIXEL_RULES, f"{where}.pixel_rule")
    for key, rule_key in (("image_fpr", "image_rule"), ("pixel_fpr", "pixel_rule")):
        if key in values:
            rules[key] = _require_rate(require_number(values[key], f"{where}.{key}"), rules.get(rule_key, ""),
                                       f"{where}.{key}")
    if "false_regions" in values:
        rules["false_regions"] = require_number(values["false_regions"], f"{where}.false_regions", allow_none=True)
    return rules


def _history_entry(values: Any, where: str) -> dict[str, Any]:
    values = require_mapping(values, where)
    require_keys(values, ("image_threshold", "pixel_threshold"), where)
    return {"image_threshold": require_number(values["image_threshold"], f"{where}.image_threshold"),
            "pixel_threshold": require_number(values["pixel_threshold"], f"{where}.pixel_threshold"),
            "replaced": require_text(values.get("replaced", ""), f"{where}.replaced"),
            "reason": require_text(values.get("reason", ""), f"{where}.reason"),
            "image_promise": require_text(values.get("image_promise", ""), f"{where}.image_promise"),
            "heldout_scores": require_numbers(values.get("heldout_scores", []), f"{where}.heldout_scores"),
            "heldout_files": require_texts(values.get("heldout_files", []), f"{where}.heldout_files"),
            "heldout_pixel_quantiles": require_numbers(values.get("heldout_pixel_quantiles", []),
                                                       f"{where}.heldout_pixel_quantiles"),
            **_history_rules(values, where)}
