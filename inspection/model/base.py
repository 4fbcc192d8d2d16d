"""The interface every method shares: `AnomalyModel`.

A method is a class with parameters set in ``__init__`` (declared once, validated, saved with the model),
``fit(good_images)`` that learns from good images only, ``predict(images)`` that returns anomaly maps at
the working resolution plus image scores, and ``save``/``load`` of one file. Subclasses implement four
small hooks: ``_fit_batches``, ``_score``, ``_state`` and ``_load_state``. Methods whose scoring also yields
pictures — reconstructions, views of their work (`views.Panel`) — override ``_score_detailed`` too, so that
nothing is computed twice.

Calibration happens inside ``fit``: a seeded share of the good images is held out from learning and
scored afterwards; the thresholds and the fixed score normalisation come from those held-out scores.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import __version__
from ..data.preprocess import RESIZE_MODES, Geometry, Preprocessing, normalization_tensors
from ..device import resolve_device
from ..errors import InspectionError, ModelFileError, ParameterError
from ..ops.tiles import cut_tiles, stitch
from ..params import ParamSet, params
from ..progress import Progress, ProgressCallback, no_progress
from .batching import item_name, iter_batches, split_holdout
from .calibration import Calibration
from .common_params import COMMON_PARAMS
from .header import BackboneRecord, ModelHeader, ModelInfo
from .modelfile import parse_header, read_model_file, resolve_model_path, write_model_file
from .prediction import Prediction
from .views import Panel, ScoredBatch, rgb_uint8

#: Tensors of optional parts attached to a model file after fitting — a defect classifier head on the backbone
#: (`inspection/explain/classifier.py`) — and the info entry describing it: not the method's own state.
ATTACHED_PREFIX = "classifier."
ATTACHED_INFO_KEY = "defect_classifier"

class AnomalyModel(ABC):
    """Base class of every method: parameters, fit/predict, calibration, one-file save/load."""

    #: Registry name, as a literal in each method's class body: the registry finds methods by it.
    name: ClassVar[str] = ""
    #: One line on what the method learns and how it scores (shown in the CLI and the app).
    description: ClassVar[str] = ""
    #: The method's own parameters (the common ones are added by `param_set`).
    method_params: ClassVar[ParamSet] = ParamSet()
    #: Defaults of common parameters that differ for this method (e.g. a network trained at 128 px: crop=128).
    default_overrides: ClassVar[dict[str, Any]] = {}
    #: The parameter whose value names a variant of the method in tables, e.g. "scoring" → "vae (projection)".
    variant_param: ClassVar[str] = ""
    #: Whether `predict` also returns reconstructed images, and why not when it does not.
    has_reconstruction: ClassVar[bool] = False
    no_reconstruction_reason: ClassVar[str] = "this method scores features; it does not reconstruct the image"
    #: Whether fitting trains weights by gradient descent (then it runs with autograd on and reports a loss).
    trains_by_gradient: ClassVar[bool] = False
    #: Human-readable names of the progress stages this method's fitting reports.
    stage_labels: ClassVar[dict[str, str]] = {}
    #: The resize modes the method can work in, and why not the others (said when one is asked for).
    resize_modes: ClassVar[tuple[str, ...]] = ("center_crop", "full")
    resize_modes_reason: ClassVar[str] = "its scoring assumes one fixed working size"

    def __init__(self, **params: Any):
        self.params: dict[str, Any] = self.param_set().resolve(params)
        self.preprocessing = Preprocessing(self.params["resize_mode"], self.params["resize"], self.params["crop"],
                                           self.default_normalization(), self.params["intensity"],
                                           self.padding_multiple(), self.params["tile_overlap"])
        self.calibration: Calibration | None = None
        self.info = ModelInfo()
        #: Tensors of parts attached to the file after fitting (`ATTACHED_PREFIX`), kept when it is saved again.
        self.attached: dict[str, torch.Tensor] = {}

    # --- declarations ---------------------------------------------------------------------------------

    @classmethod
    def param_set(cls) -> ParamSet:
        def check_resize_mode(values: Mapping[str, Any]) -> None:
            if values["resize_mode"] not in cls.resize_modes:
                raise ParameterError(f"{cls.name} does not offer resize_mode {values['resize_mode']!r}: "
                                     f"{cls.resize_modes_reason}; it offers {list(cls.resize_modes)}")

        declared = (COMMON_PARAMS + cls.method_params + params(rules=(check_resize_mode,))
                    ).with_defaults(**cls.default_overrides)
        missing = [mode for mode in RESIZE_MODES if mode not in cls.resize_modes]
        if not missing:
            return declared
        # Forms and --help say which modes the method lacks, and why, beside the field.
        said = tuple(replace(param, help=f"{param.help} Not {' or '.join(missing)} for {cls.name}: "
                                         f"{cls.resize_modes_reason}.")
                     if param.name == "resize_mode" else param for param in declared)
        return ParamSet(said, declared.rules)

    # --- explanations (Grad-CAM of the score: inspection/explain/) -----------------------------------------

    def explanation_layers(self) -> dict[str, str]:
        """The layers whose activations a Grad-CAM of the score can look at, shallowest first, each with a label for
        pickers; {} when the method's score is not a differentiable function of features it exposes."""
        return {}

    def explanation_forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """With autograd, for a normalised batch that requires grad: (each explanation layer's activations, anomaly
        maps [B, H, W] at the working size, image scores [B]) — the score Grad-CAM differentiates."""
        raise NotImplementedError(f"{self.name} exposes no layers to explain its score through")

    def explanation_network(self) -> torch.nn.Module:
        """The network guided backpropagation runs through (its ReLUs)."""
        raise NotImplementedError(f"{self.name} exposes no layers to explain its score through")

    def explanation_note(self) -> str:
        """What the explained score is, when it is not exactly the model's own score ('' when it is)."""
        return ""

    def padding_multiple(self) -> int:
        """Aspect mode pads the working size up to a multiple of this (the deepest stride the method uses)."""
        return 32

    def get_params(self) -> dict[str, Any]:
        """The parameters, as resolved by the declarations (scikit-learn's contract)."""
        return dict(self.params)

    @property
    def label(self) -> str:
        """The method's name with its variant when it has one, e.g. "vae (projection)" (for tables)."""
        return f"{self.name} ({self.params[self.variant_param]})" if self.variant_param else self.name

    def __repr__(self) -> str:
        defaults = self.param_set().defaults()
        changed = ", ".join(f"{key}={value!r}" for key, value in self.params.items() if value != defaults[key])
        return f"{type(self).__name__}({changed})"

    @property
    def device(self) -> torch.device:
        return resolve_device(self.params["device"])

    @property
    def fitted(self) -> bool:
        """True once the learned state exists (after `fit` or `load`)."""
        state = self._state()
        return bool(state) and all(tensor is not None for tensor in state.values())

    @property
    def learned_shapes(self) -> dict[str, list[int]]:
        """The shape of each learned tensor a saved model holds (e.g. PatchCore's bank: patches × channels)."""
        return {name: list(tensor.shape) for name, tensor in self._state().items() if tensor is not None}

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
    def _state(self) -> dict[str, torch.Tensor | None]:
        """Learned tensors to save (None before fitting)."""

    @abstractmethod
    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore learned tensors (on self.device); ModelFileError when they do not fit the parameters."""

    def _score_detailed(self, images: torch.Tensor, panels: bool, content: torch.Tensor | None = None
                        ) -> ScoredBatch:
        """`_score` plus what the method can show: reconstructions (when `has_reconstruction`) and, when `panels`,
        each image's views (`views.Panel`). Runs under no_grad: a scoring that needs gradients enables them.

        `content` ([B, 2]: height and width; aspect mode only) is each image's part of the batch, the rest being
        padding; only methods that offer aspect mode get it, and their `_score` takes it as a keyword."""
        maps, scores = self._score(images) if content is None else self._score(images, content=content)
        return ScoredBatch(maps, scores)

    def _backbone_record(self) -> BackboneRecord | None:
        """The backbone and weights the model was fitted with, for feature methods."""
        return None

    def _check_header(self, header: ModelHeader) -> None:
        """Raise ModelFileError when a loaded header does not fit this environment (e.g. other weights)."""

    # --- public interface -------------------------------------------------------------------------------

    def fit(self, images: Sequence[Any], progress: ProgressCallback | None = None) -> AnomalyModel:
        """Learn from good images (paths or RGB arrays); calibrate on a seeded held-out share of them."""
        images = list(images)
        if not images:
            raise ValueError("no good images to fit on")
        progress = progress or no_progress
        self.attached = {}  # what was attached to the features of an earlier fit would not fit these
        self.info.extra.pop(ATTACHED_INFO_KEY, None)
        started = time.perf_counter()
        torch.manual_seed(self.params["seed"])
        self._ensure_setup()
        self.preprocessing = replace(self.preprocessing, normalization=self.input_normalization())
        fit_index, holdout_index = split_holdout(len(images), self.params["holdout_fraction"],
                                                 self.params["min_holdout"], self.params["seed"])
        fit_images = [images[i] for i in fit_index]
        if not fit_images:
            raise ValueError("no images left to fit on after holding out the calibration images")
        device = self.device

        def batches() -> Iterator[torch.Tensor]:
            for tensor, _, _ in iter_batches(fit_images, self.preprocessing, self.params["batch_size"]):
                if self.preprocessing.mode == "tiles":  # the method learns from every tile of the good images
                    yield from self._tiles(tensor.to(device))
                else:
                    yield tensor.to(device)

        with torch.enable_grad() if self.trains_by_gradient else torch.no_grad():
            self._fit_batches(batches, len(fit_images), progress)
        calibration_images = [images[i] for i in holdout_index] if len(holdout_index) else fit_images
        progress(Progress("calibrate", 0, len(calibration_images)))
        prediction = self.predict(calibration_images)
        self.calibration = Calibration.from_good(
            prediction.raw_scores, prediction.raw_maps, self.params["image_fpr"], self.params["pixel_fpr"],
            [item_name(item) for item in calibration_images], self.params["pixel_rule"],
            self.params["false_regions"])
        progress(Progress("calibrate", len(calibration_images), len(calibration_images)))
        self.info.update(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            n_fit_images=len(fit_images),
            n_heldout_images=int(len(holdout_index)),
            calibrated_on="held-out good images" if len(holdout_index) else
                          "the fitting images (no held-out images: thresholds are optimistic)",
            fit_seconds=round(time.perf_counter() - started, 3))
        return self

    def predict(self, images: Sequence[Any], batch_size: int | None = None,
                progress: ProgressCallback | None = None, panels: bool = False) -> Prediction:
        """Anomaly maps (working resolution) and image scores for paths or RGB arrays; each image's panels (what
        the method shows of its work, `views.Panel`) too when `panels` — for a page, not for a whole test split.

        In aspect and tiles modes the maps of one prediction may differ in size: each sits at the top left of
        one array as large as the largest, NaN around it (and on aspect mode's padding)."""
        self._require_fitted()
        images = list(images)
        count = len(images)
        maps: list[Any] = [None] * count
        scores = np.zeros(count)
        geometries: list[Any] = [None] * count
        reconstructions: list[Any] = [None] * count
        image_panels: list[list[Panel]] = [[] for _ in range(count)]
        done = 0
        for tensor, batch_geometries, indices in iter_batches(images, self.preprocessing,
                                                              batch_size or self.params["batch_size"]):
            batch_maps, batch_scores, batch_reconstruction, batch_panels = self._predict_batch(
                tensor, panels, batch_geometries)
            for row, index in enumerate(indices):  # batches of varying sizes come out of order
                maps[index], scores[index], geometries[index] = batch_maps[row], batch_scores[row], \
                    batch_geometries[row]
                if batch_reconstruction is not None:
                    reconstructions[index] = batch_reconstruction[row]
                if panels and batch_panels:
                    image_panels[index] = batch_panels[row]
            done += len(indices)
            if progress is not None:
                progress(Progress("predict", done, count))
        has_reconstructions = count > 0 and reconstructions[0] is not None
        return Prediction(
            _stack_maps(maps, self.preprocessing.size), scores, geometries, self.calibration,
            _stack_maps(reconstructions, self.preprocessing.size) if has_reconstructions else None,
            image_panels if panels else None)

    def predict_tensor(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score an already normalised batch: (maps [B,H,W] float32, scores [B], reconstructions or None)."""
        maps, scores, reconstructions, _ = self._predict_batch(images, panels=False)
        return maps, scores, reconstructions

    @torch.no_grad()
    def _predict_batch(self, images: torch.Tensor, panels: bool, geometries: Sequence[Geometry] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[list[Panel]] | None]:
        self._require_fitted()
        images = images.to(self.device)
        mode = self.preprocessing.mode
        if mode == "tiles":
            scored = self._score_tiled(images)
        elif mode == "aspect":
            # Each image's content (the rest is padding): the method keeps padding out of its scores.
            seen = [geometry.seen for geometry in geometries] if geometries else [images.shape[-2:]] * len(images)
            content = torch.tensor(seen, dtype=torch.long, device=images.device).view(-1, 2)
            scored = self._score_detailed(images, panels, content=content)
            scored.maps = scored.maps.masked_fill(_padding_mask(content, scored.maps.shape[-2:]), float("nan"))
        else:
            scored = self._score_detailed(images, panels)
        if self.has_reconstruction != (scored.reconstructions is not None):
            raise RuntimeError(f"{self.name}: has_reconstruction is {self.has_reconstruction} but its scoring "
                               f"{'gave no' if self.has_reconstruction else 'gave'} reconstructions")
        reconstructions = rgb_uint8(scored.reconstructions) if scored.reconstructions is not None else None
        return (scored.maps.float().cpu().numpy(), scored.scores.double().cpu().numpy(), reconstructions,
                scored.panels if panels else None)

    def _tiles(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """The tiles of a batch of resized images, at most `batch_size` at a time (tiles mode)."""
        tiles = cut_tiles(images, self.preprocessing.crop, self.preprocessing.tile_overlap)
        yield from tiles.split(self.params["batch_size"])

    def _score_tiled(self, images: torch.Tensor) -> ScoredBatch:
        """Tiles mode: every tile scored, the maps stitched into one per image, image score = the highest tile's."""
        parts = [self._score_detailed(chunk, False) for chunk in self._tiles(images)]
        tile_maps = torch.cat([part.maps for part in parts])
        tile_scores = torch.cat([part.scores for part in parts]).view(images.shape[0], -1)
        maps = stitch(tile_maps, images.shape[-2], images.shape[-1], self.preprocessing.tile_overlap)
        return ScoredBatch(maps, tile_scores.max(dim=1).values)

    def unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised input images → RGB in [0, 1] (undoing the preprocessing's normalisation)."""
        mean_t, std_t = normalization_tensors(self.preprocessing.normalization, images.device, images.dtype)
        return images * std_t + mean_t

    # --- persistence ------------------------------------------------------------------------------------

    def header(self) -> ModelHeader:
        """The model's file header: settings, preprocessing, seed, calibration, metadata, backbone."""
        return ModelHeader(method=self.name, params=dict(self.params), preprocessing=self.preprocessing,
                           seed=self.params["seed"], package_version=__version__, calibration=self.calibration,
                           info=self.info, backbone=self._backbone_record())

    def save(self, path: str | os.PathLike) -> Path:
        """Write one file: learned tensors + settings, preprocessing, seed, calibration and metadata."""
        self._require_fitted()
        return write_model_file(path, {**self._state(), **self.attached}, self.header().to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> AnomalyModel:
        """Load a model of this method saved by `save` (any method: `inspection.registry.load_model`)."""
        path = resolve_model_path(path)
        tensors, stored = read_model_file(path)
        header = parse_header(path, stored)
        if header.method != cls.name:
            raise ModelFileError(f"{path.name} holds a {header.method!r} model, not {cls.name or 'a method'}: "
                                 "load it with inspection.registry.load_model")
        values = dict(header.params)
        if device is not None:
            values["device"] = device
        elif values.get("device") not in ("auto", "cpu"):
            values["device"] = "auto"  # a model trained on a GPU still loads on a machine without one
        try:
            model = cls(**values)
        except ParameterError as error:
            raise ModelFileError(f"{path.name}: its settings are not valid here: {error}") from None
        model.preprocessing = header.preprocessing
        try:
            model._check_header(header)
            model._ensure_setup()
            device_now = model.device
            model.attached = {name: tensor for name, tensor in tensors.items() if name.startswith(ATTACHED_PREFIX)}
            model._load_state({name: tensor.to(device_now) for name, tensor in tensors.items()
                               if not name.startswith(ATTACHED_PREFIX)})
        except InspectionError as error:  # missing weights, tensors that do not fit, …: say which file
            if path.name in str(error):
                raise
            raise type(error)(f"{path.name}: {error}") from None
        model.calibration = header.calibration
        model.info = header.info
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


def _padding_mask(content: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """[B, H, W] True on each image's padding (rows or columns beyond its content height / width)."""
    rows = torch.arange(size[0], device=content.device)[None, :, None] >= content[:, 0, None, None]
    columns = torch.arange(size[1], device=content.device)[None, None, :] >= content[:, 1, None, None]
    return rows | columns


def _stack_maps(maps: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Per-image arrays [H, W, ...] as one [N, H, W, ...] array: stacked when they share a size, else each at the
    top left of one as large as the largest (NaN around float maps, 0 around pictures)."""
    if not maps:
        return np.zeros((0, *size), np.float32)
    shapes = {item.shape for item in maps}
    if len(shapes) == 1:
        return np.stack(maps)
    height, width = max(shape[0] for shape in shapes), max(shape[1] for shape in shapes)
    fill = np.nan if np.issubdtype(maps[0].dtype, np.floating) else 0
    canvas = np.full((len(maps), height, width, *maps[0].shape[2:]), fill, maps[0].dtype)
    for index, item in enumerate(maps):
        canvas[index, : item.shape[0], : item.shape[1]] = item
    return canvas
