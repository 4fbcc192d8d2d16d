"""The interface every method shares, and the machinery around it.

A method is a class with parameters set in ``__init__`` (declared once, validated, saved with the model),
``fit(good_images)`` that learns from good images only, ``predict(images)`` that returns anomaly maps at
the working resolution plus image scores, and ``save``/``load`` of one file. Subclasses implement four
small hooks: ``_fit_batches``, ``_score``, ``_state`` and ``_load_state``.

Calibration happens inside ``fit``: a seeded share of the good images is held out from learning and
scored afterwards; the image threshold (at a target image FPR), the pixel threshold (at a target pixel
FPR) and a fixed score normalisation come from those held-out scores.
"""

from __future__ import annotations

import math
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .device import resolve_device
from .images import load_image
from .modelfile import ModelFileError, read_header, read_model_file, update_header, write_model_file
from .params import Param, ParamSet, params
from .preprocess import INTENSITY_MODES, RESIZE_MODES, Geometry, Preprocessing, map_to_original
from .regions import Region, find_regions
from .threshold import ScoreScale, pixel_threshold_at_fpr, rate_above, score_quantiles, threshold_at_fpr, validate_fpr


@dataclass(frozen=True)
class Progress:
    """What a long-running step reports: stage name, step out of total, and the loss when there is one."""

    stage: str
    step: int
    total: int
    loss: float | None = None


ProgressCallback = Callable[[Progress], None]


COMMON_PARAMS = params(
    Param("seed", int, 0, "Random seed: fixes the held-out split and every random choice of the method.",
          minimum=0, group="calibration"),
    Param("device", str, "auto", "Where to compute: 'auto' (GPU when there is one), 'cpu' or 'cuda'.",
          group="calibration"),
    Param("resize_mode", str, "center_crop", "center_crop: resize the shorter side, cut the centre square; "
          "full: resize the whole frame to a square (nothing cut off).", choices=RESIZE_MODES, group="preprocessing"),
    Param("resize", int, 256, "Shorter side after resizing (center_crop mode).", minimum=16, maximum=4096,
          group="preprocessing"),
    Param("crop", int, 224, "Working resolution: side of the square the model sees.", minimum=16, maximum=4096,
          group="preprocessing"),
    Param("intensity", str, "none", "none: pixel values as they are; standardize: set each image's brightness "
          "and contrast to fixed values (for lighting that drifts between captures).", choices=INTENSITY_MODES,
          group="preprocessing"),
    Param("holdout_fraction", float, 0.1, "Share of the good training images held out from fitting to "
          "calibrate the thresholds.", minimum=0.0, maximum=0.5, group="calibration"),
    Param("min_holdout", int, 10, "At least this many good images are held out (when there are enough).",
          minimum=0, group="calibration"),
    Param("image_fpr", float, 0.05, "Target false-positive rate of the image verdict on good images.",
          minimum=1e-6, maximum=0.999999, group="calibration"),
    Param("pixel_fpr", float, 0.05, "Target false-positive rate of the defect mask on good pixels.",
          minimum=1e-6, maximum=0.999999, group="calibration"),
    Param("batch_size", int, 16, "Images per forward pass.", minimum=1, maximum=1024, group="calibration"),
)


@dataclass
class Calibration:
    """Thresholds (raw score units; defect iff score > threshold) and the fixed score normalisation."""

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

    @classmethod
    def from_good(cls, image_scores: np.ndarray, maps: np.ndarray, image_fpr: float, pixel_fpr: float,
                  files: Sequence[str] = ()) -> "Calibration":
        image_threshold = threshold_at_fpr(image_scores, image_fpr)
        pixel_threshold = pixel_threshold_at_fpr(maps, pixel_fpr)
        # Image scores: the lowest good score → 0; pixels: the median good pixel → 0 (a calm background).
        image_scale = ScoreScale.from_reference(float(np.min(image_scores)), image_threshold)
        pixel_scale = ScoreScale.from_reference(float(np.nanmedian(maps)), pixel_threshold)
        return cls(image_threshold, pixel_threshold, image_fpr, pixel_fpr, image_scale, pixel_scale,
                   [float(score) for score in image_scores], list(files), score_quantiles(maps))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["image_scale"] = self.image_scale.to_dict()
        values["pixel_scale"] = self.pixel_scale.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        values = dict(values)
        values["image_scale"] = ScoreScale.from_dict(values["image_scale"])
        values["pixel_scale"] = ScoreScale.from_dict(values["pixel_scale"])
        return cls(**values)

    @property
    def normalized_image_threshold(self) -> float:
        return float(self.image_scale.normalize(self.image_threshold))

    @property
    def normalized_pixel_threshold(self) -> float:
        return float(self.pixel_scale.normalize(self.pixel_threshold))

    def heldout_fpr(self, image_threshold: float | None = None) -> float:
        """Image FPR measured on the held-out good images at a threshold (the saved one by default)."""
        threshold = self.image_threshold if image_threshold is None else image_threshold
        scores = np.asarray(self.heldout_scores)
        return float(np.mean(scores > threshold)) if scores.size else float("nan")

    def heldout_pixel_fpr(self, pixel_threshold: float | None = None) -> float:
        """Pixel FPR on the held-out good images at a threshold (from their saved score quantiles)."""
        threshold = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        return rate_above(self.heldout_pixel_quantiles, threshold)


@dataclass
class Prediction:
    """Raw maps and scores of a batch of images, with what is needed to normalise and display them."""

    raw_maps: np.ndarray  # [N, H, W] float32 at the working resolution
    raw_scores: np.ndarray  # [N]
    geometries: list[Geometry]
    calibration: Calibration | None
    reconstructions: np.ndarray | None = None  # [N, H, W, 3] uint8, for methods that reconstruct

    @property
    def anomaly_maps(self) -> np.ndarray:
        """Maps on the model's fixed scale (pixel threshold at 0.5 after calibration); raw when uncalibrated."""
        if self.calibration is None:
            return self.raw_maps
        return self.calibration.pixel_scale.normalize(self.raw_maps).astype(np.float32)

    @property
    def image_scores(self) -> np.ndarray:
        """Scores on the model's fixed scale (saved image threshold at 0.5); raw when uncalibrated."""
        if self.calibration is None:
            return self.raw_scores
        return np.asarray(self.calibration.image_scale.normalize(self.raw_scores), dtype=np.float64)

    @property
    def verdicts(self) -> np.ndarray:
        """True where an image is a defect at the saved image threshold."""
        if self.calibration is None:
            raise ValueError("the model is not calibrated: fit it first")
        return self.raw_scores > self.calibration.image_threshold

    def defect_masks(self, pixel_threshold: float | None = None) -> np.ndarray:
        """Binary masks (raw map > pixel threshold; the saved one by default)."""
        if pixel_threshold is None:
            if self.calibration is None:
                raise ValueError("the model is not calibrated: give a threshold")
            pixel_threshold = self.calibration.pixel_threshold
        return self.raw_maps > pixel_threshold

    def regions(self, index: int, pixel_threshold: float | None = None, min_area: int = 16) -> list[Region]:
        """Defect regions of image `index` (boxes in working-resolution pixels, normalised scores)."""
        if self.calibration is None and pixel_threshold is None:
            raise ValueError("the model is not calibrated: give a threshold")
        raw_threshold = self.calibration.pixel_threshold if pixel_threshold is None else pixel_threshold
        if self.calibration is None:
            return find_regions(self.raw_maps[index], raw_threshold, min_area=min_area)
        scale = self.calibration.pixel_scale
        return find_regions(scale.normalize(self.raw_maps[index]), float(scale.normalize(raw_threshold)),
                            min_area=min_area)

    def map_on_original(self, index: int) -> np.ndarray:
        """The normalised map of image `index` placed on its original pixel grid (NaN = not inspected)."""
        return map_to_original(self.anomaly_maps[index], self.geometries[index])


def decode(item: Any) -> np.ndarray:
    """A path, bytes or an array → H×W×3 uint8 RGB (arrays are checked, files go through load_image)."""
    if isinstance(item, np.ndarray):
        if item.ndim == 2:
            item = np.repeat(item[:, :, None], 3, axis=2)
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ValueError(f"image arrays must be H×W×3 uint8 RGB, got shape {item.shape} and dtype {item.dtype}")
        return item
    return load_image(item)


def iter_batches(items: Sequence[Any], preprocessing: Preprocessing, batch_size: int,
                 workers: int = 2) -> Iterator[tuple[torch.Tensor, list[Geometry]]]:
    """Decode and preprocess in a small thread pool, a bounded window ahead; yield normalised batches."""

    def prepare(item: Any) -> tuple[np.ndarray, Geometry]:
        return preprocessing.apply_geometry(decode(item))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        queue = iter(items)
        window = 2 * batch_size
        for item in queue:
            pending.append(pool.submit(prepare, item))
            if len(pending) >= window:
                break
        batch: list[tuple[np.ndarray, Geometry]] = []
        while pending:
            batch.append(pending.popleft().result())
            next_item = next(queue, None)
            if next_item is not None:
                pending.append(pool.submit(prepare, next_item))
            if len(batch) == batch_size or not pending:
                images, geometries = zip(*batch)
                yield preprocessing.normalize(np.stack(images)), list(geometries)
                batch = []


def split_holdout(n_images: int, fraction: float, minimum: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out): a seeded share of the good images kept apart for calibration."""
    n_holdout = max(math.ceil(fraction * n_images), minimum) if fraction > 0 else 0
    # Keep most images for fitting when there are few: never hold out more than a third.
    n_holdout = min(n_holdout, n_images // 3) if n_holdout else 0
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def _item_name(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else "<array>"


class AnomalyModel(ABC):
    """Base class of every method: parameters, fit/predict, calibration, one-file save/load."""

    #: Registry name (set by each method), a one-line description, and its own parameters.
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    method_params: ClassVar[ParamSet] = ParamSet()
    has_reconstruction: ClassVar[bool] = False
    #: Why there is no reconstruction (shown to users beside the empty view).
    no_reconstruction_reason: ClassVar[str] = "this method scores features; it does not reconstruct the image"

    def __init__(self, **values: Any):
        self.params: dict[str, Any] = self.param_set().resolve(values)
        validate_fpr(self.params["image_fpr"])
        validate_fpr(self.params["pixel_fpr"])
        self.device = resolve_device(self.params["device"])
        self.preprocessing = Preprocessing(self.params["resize_mode"], self.params["resize"], self.params["crop"],
                                           self.default_normalization(), self.params["intensity"])
        self.calibration: Calibration | None = None
        self.info: dict[str, Any] = {}
        self.fitted = False

    # --- declarations ---------------------------------------------------------------------------------

    @classmethod
    def param_set(cls) -> ParamSet:
        return COMMON_PARAMS + cls.method_params

    def default_normalization(self) -> str:
        return "inception"

    def input_normalization(self) -> str:
        """The input normalisation fitting uses (known after `_setup`; backbone methods take their weights')."""
        return self.default_normalization()

    # --- hooks for subclasses ---------------------------------------------------------------------------

    def _setup(self) -> None:
        """Build what the method needs before fitting or scoring (e.g. the backbone). Called once."""

    @abstractmethod
    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        """Learn from good images; `batches()` gives a fresh pass over them (normalised, on the device)."""

    @abstractmethod
    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps [B, H, W] at the working resolution and image scores [B], for a normalised batch."""

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]:
        """Learned tensors to save."""

    @abstractmethod
    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore learned tensors (on self.device)."""

    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor | None:
        """Reconstructed images [B, 3, H, W] (normalised like the input), for methods that have one."""
        return None

    def _header_extra(self) -> dict[str, Any]:
        """Method-specific header entries (e.g. the backbone's weights)."""
        return {}

    def _check_header_extra(self, header: dict[str, Any]) -> None:
        """Raise ModelFileError when a loaded header does not fit this environment."""

    # --- public interface -------------------------------------------------------------------------------

    def fit(self, images: Sequence[Any], progress: ProgressCallback | None = None) -> "AnomalyModel":
        """Learn from good images (paths or RGB arrays); calibrate on a seeded held-out share of them."""
        images = list(images)
        if not images:
            raise ValueError("no good images to fit on")
        progress = progress or (lambda _: None)
        started = time.perf_counter()
        torch.manual_seed(self.params["seed"])
        self._ensure_setup()
        self.preprocessing = replace(self.preprocessing, normalization=self.input_normalization())
        fit_index, holdout_index = split_holdout(len(images), self.params["holdout_fraction"],
                                                 self.params["min_holdout"], self.params["seed"])
        fit_images = [images[i] for i in fit_index]
        if not fit_images:
            raise ValueError("no images left to fit on after holding out the calibration images")

        def batches() -> Iterator[torch.Tensor]:
            for tensor, _ in iter_batches(fit_images, self.preprocessing, self.params["batch_size"]):
                yield tensor.to(self.device)

        with torch.no_grad() if not self.learns() else torch.enable_grad():
            self._fit_batches(batches, len(fit_images), progress)
        self.fitted = True
        calibration_images = [images[i] for i in holdout_index] if len(holdout_index) else fit_images
        progress(Progress("calibrate", 0, len(calibration_images)))
        prediction = self.predict(calibration_images)
        self.calibration = Calibration.from_good(
            prediction.raw_scores, prediction.raw_maps, self.params["image_fpr"], self.params["pixel_fpr"],
            [_item_name(calibration_images[i]) for i in range(len(calibration_images))])
        progress(Progress("calibrate", len(calibration_images), len(calibration_images)))
        self.info.update({
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_fit_images": len(fit_images),
            "n_heldout_images": int(len(holdout_index)),
            "calibrated_on": "held-out good images" if len(holdout_index) else
                             "the fitting images (no held-out images: thresholds are optimistic)",
            "fit_seconds": round(time.perf_counter() - started, 3),
        })
        return self

    def learns(self) -> bool:
        """Whether fitting trains weights by gradient descent (then it runs with autograd on)."""
        return False

    def predict(self, images: Sequence[Any], batch_size: int | None = None,
                progress: ProgressCallback | None = None) -> Prediction:
        """Anomaly maps (working resolution) and image scores for paths or RGB arrays."""
        self._require_fitted()
        images = list(images)
        maps, scores, geometries, reconstructions = [], [], [], []
        done = 0
        for tensor, batch_geometries in iter_batches(images, self.preprocessing,
                                                     batch_size or self.params["batch_size"]):
            batch_maps, batch_scores, batch_reconstruction = self.predict_tensor(tensor)
            maps.append(batch_maps)
            scores.append(batch_scores)
            geometries.extend(batch_geometries)
            if batch_reconstruction is not None:
                reconstructions.append(batch_reconstruction)
            done += len(batch_geometries)
            if progress is not None:
                progress(Progress("predict", done, len(images)))
        height, width = self.preprocessing.size
        return Prediction(
            np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32),
            np.concatenate(scores) if scores else np.zeros(0),
            geometries, self.calibration,
            np.concatenate(reconstructions) if reconstructions else None)

    @torch.no_grad()
    def predict_tensor(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score an already normalised batch: (maps [B,H,W] float32, scores [B], reconstructions or None)."""
        self._require_fitted()
        images = images.to(self.device)
        maps, scores = self._score(images)
        reconstruction = self._reconstruct(images) if self.has_reconstruction else None
        if reconstruction is not None:
            reconstruction = self._denormalize(reconstruction)
        return (maps.float().cpu().numpy(), scores.double().cpu().numpy(), reconstruction)

    def _denormalize(self, images: torch.Tensor) -> np.ndarray:
        from .backbones import NORMALIZATIONS

        mean, std = NORMALIZATIONS[self.preprocessing.normalization]
        mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
        rgb = (images * std_t + mean_t).clamp(0, 1).mul(255).round().byte()
        return rgb.permute(0, 2, 3, 1).cpu().numpy()

    # --- thresholds -------------------------------------------------------------------------------------

    def set_thresholds(self, image_threshold: float | None = None, pixel_threshold: float | None = None) -> None:
        """Replace the saved thresholds (raw units); the score normalisation stays fixed."""
        calibration = self._require_calibrated()
        for name, value in (("image threshold", image_threshold), ("pixel threshold", pixel_threshold)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if image_threshold is not None:
            calibration.image_threshold = float(image_threshold)
        if pixel_threshold is not None:
            calibration.pixel_threshold = float(pixel_threshold)

    # --- persistence ------------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "package_version": __version__,
            "params": self.params,
            "preprocessing": self.preprocessing.to_dict(),
            "seed": self.params["seed"],
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "info": self.info,
            **self._header_extra(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write one file: learned tensors + settings, preprocessing, seed, calibration and metadata."""
        self._require_fitted()
        return write_model_file(path, self._state(), self.header())

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> "AnomalyModel":
        """Load a model saved by `save` (of this class or, from AnomalyModel, of any registered method)."""
        from .registry import get_method

        tensors, header = read_model_file(path)
        method_cls = get_method(header.get("method", ""))
        if cls is not AnomalyModel and not issubclass(method_cls, cls):
            raise ModelFileError(f"{Path(path).name} holds a {header['method']} model, not {cls.name}")
        values = dict(header["params"])
        if device is not None:
            values["device"] = device
        elif values.get("device") not in ("auto", "cpu"):
            values["device"] = "auto"  # a model trained on a GPU still loads on a machine without one
        try:
            model = method_cls(**values)
        except ValueError as error:
            raise ModelFileError(f"{Path(path).name}: its settings are not valid here: {error}") from error
        model.preprocessing = Preprocessing.from_dict(header["preprocessing"])
        model._check_header_extra(header)
        model._ensure_setup()
        model._load_state({name: tensor.to(model.device) for name, tensor in tensors.items()})
        model.calibration = Calibration.from_dict(header["calibration"]) if header.get("calibration") else None
        model.info = dict(header.get("info") or {})
        model.fitted = True
        return model

    # --- helpers ----------------------------------------------------------------------------------------

    def _ensure_setup(self) -> None:
        if not getattr(self, "_is_set_up", False):
            self._setup()
            self._is_set_up = True

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"the {self.name} model is not fitted yet: call fit(good_images) first")

    def _require_calibrated(self) -> Calibration:
        if self.calibration is None:
            raise ValueError("the model has no calibration: fit it first")
        return self.calibration


def read_model_info(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's header (settings, calibration, metadata) without loading its weights."""
    return read_header(path)


def save_thresholds(path: str | os.PathLike, image_threshold: float | None = None,
                    pixel_threshold: float | None = None) -> dict[str, Any]:
    """Rewrite a model file's thresholds (raw units) atomically; returns the new header."""
    for name, value in (("image threshold", image_threshold), ("pixel threshold", pixel_threshold)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")

    def update(header: dict[str, Any]) -> dict[str, Any]:
        if not header.get("calibration"):
            raise ModelFileError(f"{Path(path).name} has no calibration to update")
        if image_threshold is not None:
            header["calibration"]["image_threshold"] = float(image_threshold)
        if pixel_threshold is not None:
            header["calibration"]["pixel_threshold"] = float(pixel_threshold)
        return header

    return update_header(path, update)


def update_info(path: str | os.PathLike, **entries: Any) -> dict[str, Any]:
    """Merge entries into a model file's metadata (e.g. a new name) atomically."""

    def update(header: dict[str, Any]) -> dict[str, Any]:
        header.setdefault("info", {}).update(entries)
        return header

    return update_header(path, update)
