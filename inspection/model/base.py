"""The interface every method shares: `AnomalyModel`.

A method is a class whose parameters are declared as annotated class attributes (`inspection.params.setting`; the
common ones in `common_params`), with ``fit(good_images)`` that learns from good images only,
``predict(images)`` that returns anomaly maps at the working resolution plus image scores, and ``save``/``load`` of
one file. Subclasses implement four small hooks: ``_fit_batches``, ``_score``, ``_state`` and ``_load_state``;
what they can do is stated once in their `Capabilities`. Methods whose scoring also yields pictures —
reconstructions, views of their work (`views.Panel`) — override ``_score_detailed`` too, so that nothing is
computed twice. The tiles and aspect modes are in `modes`; explanations are a protocol of `inspection.explain`.

Calibration happens inside ``fit``: a seeded share of the good images is held out from learning and
scored afterwards; the thresholds and the fixed score normalisation come from those held-out scores.
"""

from __future__ import annotations

import hashlib
import json
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
from ..data.images import image_channels
from ..data.preprocess import RESIZE_MODES, Geometry, Preprocessing, normalization_tensors
from ..device import resolve_device
from ..errors import InspectionError, ModelFileError, ParameterError, WeightsNotFoundError
from ..params import ParamSet
from ..progress import Progress, ProgressCallback, no_progress
from ..scores.thresholds import holdout_for_target
from . import heldout, modes
from .batching import item_name, iter_batches, split_holdout
from .calibration import Calibration
from .capabilities import Capabilities
from .common_params import CommonParams
from .familiarity import (
    BANK_TENSOR,
    INFO_KEY,
    Familiarity,
    describe_images,
    nearest_distance,
    read_familiarity,
    squeeze_picture,
)
from .header import BackboneRecord, ModelHeader, ModelInfo
from .modelfile import parse_header, read_model_file, resolve_model_path, write_model_file
from .prediction import Prediction, stack_maps
from .views import Panel, ScoredBatch, rgb_uint8

#: Tensors of optional parts attached to a model file after fitting — a defect classifier head on the backbone
#: (`inspection/explain/classifier.py`) — and the info entry describing it: not the method's own state.
ATTACHED_PREFIX = "classifier."
ATTACHED_INFO_KEY = "defect_classifier"
#: The model info entry that records the training images' sizes and channel counts (`image_kinds`).
IMAGE_KINDS_KEY = "training_images"
#: At most this many distinct sizes are recorded: a set of more sizes than that is taken to accept any size.
MAX_RECORDED_SIZES = 32
#: The model info entry that holds what was taught (`inspection.teach`): the decisions in force, and the method's
#: teaching state.
TEACHING_KEY = "teaching"
#: Parameters whose change makes a model build its backbone (or network) again before it is used.
_SETUP_PARAMS = frozenset({"backbone", "weights", "layers", "device", "seed"})
#: Settings that do not change a model's results (where it runs, how many images per pass).
_NOT_RESULTS = frozenset({"device", "batch_size"})


class AnomalyModel(CommonParams, ABC):
    """Base class of every method: parameters, fit/predict, calibration, one-file save/load."""

    #: Registry name, as a literal in each method's class body: the registry finds methods by it.
    name: ClassVar[str] = ""
    #: One line on what the method learns and how it scores (shown in the CLI and the app).
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __post_init__(self) -> None:
        self.preprocessing = self._preprocessing(self.default_normalization())
        self.calibration: Calibration | None = None
        self.info = ModelInfo()
        #: Tensors of parts attached to the file after fitting (`ATTACHED_PREFIX`), kept when it is saved again.
        self.attached: dict[str, torch.Tensor] = {}
        #: The good training images' vectors and the line beyond which an image is unlike them (`familiarity`);
        #: None for files made before the check, or when the descriptor's weights were missing at fit.
        self.familiarity: Familiarity | None = None
        self.familiarity_bank: torch.Tensor | None = None
        #: The held-out good images of fit as the method's scoring takes them (`heldout`): a model that learns
        #: without a refit scores its calibration set again from them (`rescore_heldout`).
        self.heldout: list[heldout.HeldoutChunk] = []

    def _preprocessing(self, normalization: str) -> Preprocessing:
        return Preprocessing(self.resize_mode, self.resize, self.crop, normalization, self.intensity,
                             self.padding_multiple(), self.tile_overlap)

    def _params_changed(self, names: set[str]) -> None:
        self.preprocessing = self._preprocessing(self.preprocessing.normalization)
        if names & _SETUP_PARAMS:
            self._is_set_up = False

    @classmethod
    def param_set(cls) -> ParamSet:
        declared = super().param_set()
        offered, reason = cls.capabilities.resize_modes, cls.capabilities.resize_modes_reason

        def check_resize_mode(values: Mapping[str, Any]) -> None:
            if values["resize_mode"] not in offered:
                raise ParameterError(f"{cls.name} does not offer resize_mode {values['resize_mode']!r}: {reason}; it "
                                     f"offers {list(offered)}")

        missing = [mode for mode in RESIZE_MODES if mode not in offered]
        # Forms and --help say which modes the method lacks, and why, beside the field.
        said = tuple(replace(param, help=f"{param.help} Not {' or '.join(missing)} for {cls.name}: {reason}.")
                     if param.name == "resize_mode" and missing else param for param in declared)
        return ParamSet(said, (*declared.rules, check_resize_mode))

    # --- what a method may override -------------------------------------------------------------------------

    def padding_multiple(self) -> int:
        """Aspect mode pads the working size up to a multiple of this (the deepest stride the method uses)."""
        return 32

    def default_normalization(self) -> str:
        return "inception"

    def input_normalization(self) -> str:
        """The input normalisation fitting uses (known after `_setup`; backbone methods take their weights')."""
        return self.default_normalization()

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
        """Restore learned tensors (on the model's device); ModelFileError when they do not fit the parameters."""

    def _score_detailed(self, images: torch.Tensor, panels: bool, content: torch.Tensor | None = None
                        ) -> ScoredBatch:
        """`_score` plus what the method can show: reconstructions (when it `reconstructs`) and, when `panels`,
        each image's views (`views.Panel`). Runs under no_grad: a scoring that needs gradients enables them.

        `content` ([B, 2]: height and width; aspect mode only) is each image's part of the batch, the rest being
        padding; only methods that offer aspect mode get it, and their `_score` takes it as a keyword."""
        maps, scores = self._score(images) if content is None else self._score(images, content=content)
        return ScoredBatch(maps, scores)

    def export_refusal(self) -> str:
        """Why this model's scoring cannot be exported as one graph (`inspection export`); empty when it can. Methods
        whose variants differ (an optimisation per image or one forward pass) answer per variant."""
        return self.capabilities.export_refused

    def teach_refusal(self) -> str:
        """Why this model cannot learn a good image without a refit (`inspection teach`); empty when it can."""
        return self.capabilities.teach_refused

    def learn_good(self, images: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """Learn normalised good images (as fitting sees them, on the device) without a refit, exactly as the method
        allows; `state` is the model's teaching state (JSON, kept in the file), which the method may fill. Returns
        what `unlearn` needs to undo it (JSON). Only methods with an empty `teach_refusal` implement it."""
        raise NotImplementedError(f"{self.name} cannot learn without a refit: {self.teach_refusal()}")

    def unlearn(self, record: Mapping[str, Any]) -> None:
        """Undo the last `learn_good`, whose return value was `record`, exactly (tensors equal to before)."""
        raise NotImplementedError(f"{self.name} cannot learn without a refit: {self.teach_refusal()}")

    def _heldout_chunks(self, images: Sequence[Any]) -> Iterator[heldout.HeldoutChunk]:
        """The held-out images as the method's scoring takes them, a batch at a time, for `rescore_heldout` (methods
        that learn without a refit); none by default."""
        return iter(())

    def _score_heldout(self, chunk: heldout.HeldoutChunk) -> torch.Tensor:
        """Raw scores [rows] of one chunk of `_heldout_chunks` by the model as it is now."""
        raise NotImplementedError(f"{self.name} keeps no held-out images to score again")

    def _backbone_record(self) -> BackboneRecord | None:
        """The backbone and weights the model was fitted with, for feature methods."""
        return None

    def _check_header(self, header: ModelHeader) -> None:
        """Raise ModelFileError when a loaded header does not fit this environment (e.g. other weights)."""

    # --- what it is ----------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The method's name with its variant when it has one, e.g. "vae (projection)" (for tables)."""
        variant = self.capabilities.variant_param
        return f"{self.name} ({getattr(self, variant)})" if variant else self.name

    def __repr__(self) -> str:
        defaults = self.param_set().defaults()
        changed = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items() if value != defaults[key])
        return f"{type(self).__name__}({changed})"

    @property
    def torch_device(self) -> torch.device:
        """The device the `device` parameter resolves to here."""
        return resolve_device(self.device)

    @property
    def fitted(self) -> bool:
        """True once the learned state exists (after `fit` or `load`)."""
        state = self._state()
        return bool(state) and all(tensor is not None for tensor in state.values())

    @property
    def fingerprint(self) -> str:
        """What makes two models' results the same: the method, its creation, settings and calibration (16 hex
        digits; an exported copy keeps it)."""
        calibration = self.calibration
        identity = {"method": self.name, "created": self.info.created,
                    "params": {key: value for key, value in self.get_params().items() if key not in _NOT_RESULTS},
                    "calibration": None if calibration is None else
                    [calibration.image_threshold, calibration.pixel_threshold, repr(calibration.image_scale),
                     repr(calibration.pixel_scale), calibration.colour_max]}
        taught = self.info.extra.get(TEACHING_KEY, {}).get("decisions")
        if taught:  # a taught model is another model: the decisions in force name its version
            identity["taught"] = [decision.get("id") for decision in taught]
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    #: Which engine scores: the model itself in torch (exported copies: "onnx", "openvino"; `inspection.runtime`).
    runtime: ClassVar[str] = "torch"

    @property
    def learned_shapes(self) -> dict[str, list[int]]:
        """The shape of each learned tensor a saved model holds (e.g. PatchCore's bank: patches × channels)."""
        return {name: list(tensor.shape) for name, tensor in self._state().items() if tensor is not None}

    # --- fit and predict ------------------------------------------------------------------------------------

    def fit(self, images: Sequence[Any], progress: ProgressCallback | None = None) -> AnomalyModel:
        """Learn from good images (paths or RGB arrays); calibrate on a seeded held-out share of them."""
        images = list(images)
        if not images:
            raise ValueError("no good images to fit on")
        progress = progress or no_progress
        self.attached = {}  # what was attached to the features of an earlier fit would not fit these
        self.info.extra.pop(ATTACHED_INFO_KEY, None)
        self.info.extra.pop(TEACHING_KEY, None)  # what was taught to an earlier fit is not in this one
        self.heldout = []
        self.info.extra.pop(heldout.INFO_KEY, None)
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        self._ensure_setup()
        self.preprocessing = replace(self.preprocessing, normalization=self.input_normalization())
        fit_index, holdout_index = split_holdout(len(images), self.holdout_fraction,
                                                 self.min_holdout or holdout_for_target(self.image_fpr), self.seed)
        fit_images = [images[i] for i in fit_index]
        if not fit_images:
            raise ValueError("no images left to fit on after holding out the calibration images")
        device = self.torch_device
        sizes: set[tuple[int, int]] = set()

        def batches() -> Iterator[torch.Tensor]:
            for tensor, geometries, _ in iter_batches(fit_images, self.preprocessing, self.batch_size):
                sizes.update((geometry.original_height, geometry.original_width) for geometry in geometries)
                if self.preprocessing.mode == "tiles":  # the method learns from every tile of the good images
                    yield from modes.tiles(tensor.to(device), self.preprocessing.crop, self.preprocessing.tile_overlap,
                                           self.batch_size)
                else:
                    yield tensor.to(device)

        with torch.enable_grad() if self.capabilities.trains_by_gradient else torch.no_grad():
            self._fit_batches(batches, len(fit_images), progress)
        self._fit_familiarity_bank(fit_images)
        self.info.extra[IMAGE_KINDS_KEY] = image_kinds(fit_images, sizes)
        calibration_images = [images[i] for i in holdout_index] if len(holdout_index) else fit_images
        progress(Progress("calibrate", 0, len(calibration_images)))
        prediction = self.predict(calibration_images)
        self.calibration = Calibration.from_good(
            prediction.raw_scores, prediction.raw_maps, self.image_fpr, self.pixel_fpr,
            [item_name(item) for item in calibration_images], self.pixel_rule, self.false_regions)
        if self.familiarity_bank is not None:
            # Held-out images are measured against the bank they are not in; without any, each training image
            # against the others.
            distances = (prediction.familiarity_distances if len(holdout_index) else
                         nearest_distance(self.familiarity_bank, self.familiarity_bank, exclude_self=True))
            self.familiarity = Familiarity.from_heldout(distances)
            self.info.extra[INFO_KEY] = self.familiarity.to_dict()
        if len(holdout_index) and not self.teach_refusal():
            self._keep_heldout(calibration_images)
        progress(Progress("calibrate", len(calibration_images), len(calibration_images)))
        self.info.update(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            n_fit_images=len(fit_images),
            n_heldout_images=int(len(holdout_index)),
            calibrated_on="held-out good images" if len(holdout_index) else
                          "the fitting images (no held-out images: thresholds are optimistic)",
            fit_seconds=round(time.perf_counter() - started, 3))
        return self

    @torch.no_grad()
    def _keep_heldout(self, images: Sequence[Any]) -> None:
        """Keep the held-out images' features for `rescore_heldout`, and say in the model's info what was kept (or
        why nothing was: over `heldout.MAX_MIB`, found a batch at a time)."""
        chunks, size = [], 0
        for chunk in self._heldout_chunks(images):
            size += chunk.nbytes
            if not heldout.within_limit(size):
                self.info.extra[heldout.INFO_KEY] = {
                    "reason": f"the {len(images)} held-out images' features take more than {heldout.MAX_MIB} MiB: a "
                              "taught model keeps the held-out scores of fit"}
                return
            chunks.append(chunk)
        if not chunks:
            return
        self.heldout = chunks
        self.info.extra[heldout.INFO_KEY] = heldout.info_entry(self.calibration.heldout_files, size)

    @torch.no_grad()
    def keep_heldout_image(self, image: Any) -> dict[str, Any] | None:
        """Keep the features of the image that has just joined the calibration set as its last file (a taught
        image), beside the fit's held-out ones, so that `rescore_heldout` scores it too. Returns what undoing it
        takes (`forget_heldout_image`); None, keeping nothing, when the kept features do not back the rest of the
        calibration set or would pass `heldout.MAX_MIB`."""
        count = self._kept_heldout_count()
        if not count or count != len(self.calibration.heldout_files) - 1:
            return None
        chunks = list(self._heldout_chunks([image]))
        for chunk in chunks:  # tiles mode: every tile belongs to the one image
            chunk.owners = torch.full_like(chunk.owners, count)
        size = sum(chunk.nbytes for chunk in [*self.heldout, *chunks])
        if not chunks or not heldout.within_limit(size):
            return None
        entry = self.info.extra[heldout.INFO_KEY]
        self.heldout.extend(chunks)
        self.info.extra[heldout.INFO_KEY] = heldout.info_entry(self.calibration.heldout_files, size)
        return {"chunks": len(chunks), "entry_before": entry}

    def forget_heldout_image(self, record: Mapping[str, Any]) -> None:
        """Undo `keep_heldout_image`, whose return value was `record`: the kept features and their entry in the
        model's info are those before it."""
        del self.heldout[len(self.heldout) - int(record["chunks"]):]
        self.info.extra[heldout.INFO_KEY] = dict(record["entry_before"])

    @torch.no_grad()
    def rescore_heldout(self) -> np.ndarray | None:
        """The calibration set's images scored by the model as it is now (raw), from the features kept of them (the
        fit's held-out images, then the taught images that joined it): the first scores of a taught model's
        calibration set. None when none were kept, or when the calibration set is no longer the one they were kept
        for (a recalibration replaced it)."""
        count = self._kept_heldout_count()
        return heldout.image_scores(self.heldout, self._score_heldout, count) if count else None

    def _kept_heldout_count(self) -> int:
        """How many of the calibration set's first images the kept features are of; 0 when none were kept or the
        calibration set no longer starts with the images they were kept for."""
        entry = self.info.extra.get(heldout.INFO_KEY) or {}
        count = int(entry.get("images") or 0)
        if (not self.heldout or not count or self.calibration is None
                or heldout.files_digest(self.calibration.heldout_files[:count]) != entry.get("files")):
            return 0
        return count

    @torch.no_grad()
    def _fit_familiarity_bank(self, fit_images: Sequence[Any]) -> None:
        """The vectors of the good training images (`familiarity`); none, with the reason kept in the model's
        info, when the descriptor's weights are missing."""
        self.familiarity, self.familiarity_bank = None, None
        self.info.extra.pop(INFO_KEY, None)
        self.info.extra.pop(f"{INFO_KEY}_unavailable", None)
        vectors = []
        try:
            for tensor, geometries, _ in iter_batches(fit_images, self.preprocessing, self.batch_size):
                vectors.append(self._describe(tensor.to(self.torch_device), geometries))
        except WeightsNotFoundError as error:
            self.info.extra[f"{INFO_KEY}_unavailable"] = str(error).splitlines()[0]
            return
        self.familiarity_bank = torch.cat(vectors).cpu()

    def _describe(self, images: torch.Tensor, geometries: Sequence[Geometry] | None) -> torch.Tensor:
        """The familiarity vectors of a normalised batch: of each image's own part in aspect mode (not padding)."""
        rgb = self.unit_range(images).clamp(0, 1)
        if self.preprocessing.mode != "aspect" or not geometries:
            return describe_images(rgb)
        # Each image's own part squeezed apart (their sizes differ), then one forward pass for the batch.
        content = modes.content_sizes(images, [geometry.seen for geometry in geometries]).tolist()
        return describe_images(torch.cat([squeeze_picture(rgb[row:row + 1, :, :height, :width])
                                          for row, (height, width) in enumerate(content)]))

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
        distances = np.full(count, np.nan)
        done = 0
        for tensor, batch_geometries, indices in iter_batches(images, self.preprocessing,
                                                              batch_size or self.batch_size):
            batch_maps, batch_scores, batch_reconstruction, batch_panels = self._predict_batch(
                tensor, panels, batch_geometries)
            batch_distances = self._familiarity_distances(tensor, batch_geometries)
            for row, index in enumerate(indices):  # batches of varying sizes come out of order
                maps[index], scores[index], geometries[index] = batch_maps[row], batch_scores[row], \
                    batch_geometries[row]
                if batch_distances is not None:
                    distances[index] = batch_distances[row]
                if batch_reconstruction is not None:
                    reconstructions[index] = batch_reconstruction[row]
                if panels and batch_panels:
                    image_panels[index] = batch_panels[row]
            done += len(indices)
            if progress is not None:
                progress(Progress("predict", done, count))
        has_reconstructions = count > 0 and reconstructions[0] is not None
        size = self.preprocessing.size
        return Prediction(
            stack_maps(maps, size), scores, geometries, self.calibration,
            stack_maps(reconstructions, size) if has_reconstructions else None, image_panels if panels else None,
            distances if self.familiarity_bank is not None else None, self.familiarity)

    @torch.no_grad()
    def _familiarity_distances(self, images: torch.Tensor, geometries: Sequence[Geometry]) -> np.ndarray | None:
        """Each image's distance to the nearest good training image (`familiarity`); None without a bank."""
        if self.familiarity_bank is None:
            return None
        return nearest_distance(self._describe(images.to(self.torch_device), geometries), self.familiarity_bank)

    def predict_tensor(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score an already normalised batch: (maps [B,H,W] float32, scores [B], reconstructions or None)."""
        maps, scores, reconstructions, _ = self._predict_batch(images, panels=False)
        return maps, scores, reconstructions

    @torch.no_grad()
    def _predict_batch(self, images: torch.Tensor, panels: bool, geometries: Sequence[Geometry] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[list[Panel]] | None]:
        self._require_fitted()
        images = images.to(self.torch_device)
        if self.preprocessing.mode == "tiles":
            scored = modes.score_tiled(images, lambda tiles: self._score_detailed(tiles, False),
                                       self.preprocessing.crop, self.preprocessing.tile_overlap, self.batch_size)
        elif self.preprocessing.mode == "aspect":
            # Each image's content (the rest is padding): the method keeps padding out of its scores.
            content = modes.content_sizes(images, [geometry.seen for geometry in geometries or []])
            scored = self._score_detailed(images, panels, content=content)
            scored.maps = modes.without_padding(scored.maps, content)
        else:
            scored = self._score_detailed(images, panels)
        if self.capabilities.reconstructs != (scored.reconstructions is not None):
            raise RuntimeError(f"{self.name}: capabilities.reconstructs is {self.capabilities.reconstructs} but its "
                               f"scoring {'gave no' if self.capabilities.reconstructs else 'gave'} reconstructions")
        reconstructions = rgb_uint8(scored.reconstructions) if scored.reconstructions is not None else None
        return (scored.maps.float().cpu().numpy(), scored.scores.double().cpu().numpy(), reconstructions,
                scored.panels if panels else None)

    def unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised input images → RGB in [0, 1] (undoing the preprocessing's normalisation)."""
        mean_t, std_t = normalization_tensors(self.preprocessing.normalization, images.device, images.dtype)
        return images * std_t + mean_t

    # --- persistence ------------------------------------------------------------------------------------

    def header(self) -> ModelHeader:
        """The model's file header: settings, preprocessing, seed, calibration, metadata, backbone."""
        return ModelHeader(method=self.name, params=self.get_params(), preprocessing=self.preprocessing,
                           seed=self.seed, package_version=__version__, calibration=self.calibration,
                           info=self.info, backbone=self._backbone_record())

    def save(self, path: str | os.PathLike) -> Path:
        """Write one file: learned tensors + settings, preprocessing, seed, calibration and metadata."""
        self._require_fitted()
        bank = {} if self.familiarity_bank is None else {BANK_TENSOR: self.familiarity_bank}
        return write_model_file(path, {**self._state(), **self.attached, **bank, **heldout.to_tensors(self.heldout)},
                                self.header().to_dict())

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
            model = cls.from_params(values)
        except ParameterError as error:
            raise ModelFileError(f"{path.name}: its settings are not valid here: {error}") from None
        model.preprocessing = header.preprocessing
        try:
            model._check_header(header)
            model._ensure_setup()
            device_now = model.torch_device
            model.attached = {name: tensor for name, tensor in tensors.items() if name.startswith(ATTACHED_PREFIX)}
            model._load_state({name: tensor.to(device_now) for name, tensor in tensors.items()
                               if not name.startswith((ATTACHED_PREFIX, heldout.HELDOUT_PREFIX))
                               and name != BANK_TENSOR})
            model.heldout = heldout.from_tensors(tensors)
            model.familiarity, model.familiarity_bank = read_familiarity(header.info.extra, tensors)
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


def image_kinds(images: Sequence[Any], sizes: set[tuple[int, int]]) -> dict[str, Any]:
    """What the training images were: their distinct sizes (height, width; None when there were more than
    MAX_RECORDED_SIZES) and channel counts as stored (files only), for checks on images taught later."""
    channels = set()
    for item in images:
        path = getattr(item, "path", item)  # a placed image is its file moved
        if isinstance(path, (str, os.PathLike)):
            channels.add(image_channels(path))
    return {"sizes": None if len(sizes) > MAX_RECORDED_SIZES else sorted([list(size) for size in sizes]),
            "channels": sorted(channels)}
