"""An exported folder opened for scoring: its manifest, its graphs (one per working size) on onnxruntime or OpenVINO,
and `ExportedModel.predict`, which gives the same `Prediction` as the torch model's.

The folder (written by `inspection.export`):

- ``model.json``: the manifest — format and version, the model's fingerprint, its header (settings, preprocessing,
  seed, calibration, info) as the model file holds it, and the graphs;
- ``graph-HxW.onnx`` (and ``graph-HxW.xml``/``.bin``, OpenVINO IR): `INPUTS` in — normalised images [B, 3, H, W],
  each image's content size [B, 2] (aspect mode pads it up to the working size) and its familiarity squeeze as two
  matrices (`graph_inputs`) —, anomaly maps [B, H, W] (NaN on padding), image scores [B] and familiarity vectors
  [B, C] out; one graph per working size, since a backbone's padding arithmetic is fixed when it is traced (the
  batch size is free);
- ``familiarity-bank.npy``: the good training images' familiarity vectors (absent for models made without them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preprocess import Geometry, Preprocessing
from ..errors import ImageSizeError, ModelFileError, ParameterError
from ..model.batching import iter_arrays
from ..model.familiarity import DESCRIPTOR_SIDE, Familiarity, squeeze_weights
from ..model.header import ModelHeader
from ..model.prediction import Prediction, stack_maps

#: What reads an exported graph: onnxruntime (the default) or OpenVINO.
ENGINES = ("onnx", "openvino")
EXPORT_FORMAT = "inspection-export"
EXPORT_VERSION = 1
MANIFEST = "model.json"
BANK_FILE = "familiarity-bank.npy"
#: The graphs' inputs and outputs, by name.
INPUTS = ("images", "content", "squeeze_rows", "squeeze_columns")
OUTPUTS = ("maps", "scores", "vectors")


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its file stem and the working size (height, width) it takes."""

    stem: str
    working: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"stem": self.stem, "working": list(self.working)}

    @classmethod
    def from_dict(cls, values: Any) -> GraphEntry:
        try:
            return cls(str(values["stem"]), (int(values["working"][0]), int(values["working"][1])))
        except (KeyError, TypeError, ValueError, IndexError):
            raise ModelFileError(f"{MANIFEST}: a graph entry is malformed: {values!r}") from None


def graph_inputs(images: np.ndarray, geometries: Sequence[Geometry]) -> dict[str, np.ndarray]:
    """A graph's inputs for a normalised batch of one working size: the images, each one's content size, and each
    one's familiarity squeeze (`squeeze_weights` of its content, zero over the padding)."""
    batch, _, height, width = images.shape
    content = np.array([geometry.seen for geometry in geometries], np.int64).reshape(batch, 2)
    rows = np.zeros((batch, DESCRIPTOR_SIDE, height), np.float32)
    columns = np.zeros((batch, DESCRIPTOR_SIDE, width), np.float32)
    for index, (seen_height, seen_width) in enumerate(content):  # one small matrix per image, never per pixel
        rows[index, :, :seen_height] = squeeze_weights(int(seen_height))
        columns[index, :, :seen_width] = squeeze_weights(int(seen_width))
    return {"images": np.ascontiguousarray(images, np.float32), "content": content, "squeeze_rows": rows,
            "squeeze_columns": columns}


def is_export(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder made by `inspection export`."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


@dataclass(frozen=True)
class ExportedPreprocessing(Preprocessing):
    """The model's preprocessing, which also refuses, in one line, an image of a size no graph was exported for."""

    #: The working size (height, width) of every exported graph.
    exported: tuple[tuple[int, int], ...] = ()

    def check_inspectable(self, height: int, width: int, name: str | None = None) -> None:
        super().check_inspectable(height, width, name)
        geometry = self.geometry(height, width)
        if self.exported and (geometry.height, geometry.width) not in self.exported:
            label = f"{name}: " if name else ""
            sizes = ", ".join(f"{w} × {h}" for h, w in self.exported)
            raise ImageSizeError(
                f"{label}image is {width} × {height} px, which this export cannot score: its graphs take working "
                f"sizes {sizes} px, and this image's is {geometry.width} × {geometry.height} (export again adding "
                f"--image-size {width}x{height})")

    def to_dict(self) -> dict:
        values = super().to_dict()
        values.pop("exported", None)
        return values


class _OnnxGraph:
    """One graph on onnxruntime's CPU provider."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ParameterError("onnxruntime is not installed: pip install onnxruntime (or the runtime extra: "
                                 "pip install 'inspection[runtime]')") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        # Idle worker threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE does for torch): spinning ones
        # take the cores from the threads decoding the next images, and from any other process on them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        #: The inputs the graph kept (the exporter drops those a method does not read, e.g. content in full mode).
        self.inputs = [node.name for node in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(list(OUTPUTS), {name: inputs[name] for name in self.inputs})
        return dict(zip(OUTPUTS, values))


class _OpenVinoGraph:
    """One graph compiled by OpenVINO for the CPU."""

    def __init__(self, path: Path) -> None:
        try:
            import openvino
        except ImportError:
            raise ParameterError("openvino is not installed: pip install openvino") from None
        # Full float precision: on CPUs with bf16 units OpenVINO would otherwise lower it, and the maps drift by
        # percents of their range.
        self.compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        # Inputs and outputs by the graph's names, which the converter keeps among each tensor's names (not always
        # as the first: a VAE's image input also carries the name of the sum it flows into); outputs by position
        # (the ONNX order) where a name is gone.
        self.inputs = [next(name for name in INPUTS if name in node.get_names()) for node in self.compiled.inputs]
        outputs = list(self.compiled.outputs)
        self.outputs = {name: next((node for node in outputs if name in node.get_names()), outputs[index])
                        for index, name in enumerate(OUTPUTS)}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.compiled({name: inputs[name] for name in self.inputs})
        return {name: np.asarray(results[node]) for name, node in self.outputs.items()}


_GRAPH_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an exported folder, checked: ModelFileError naming what is wrong and what to do."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{folder} is not an exported model (no {MANIFEST}): make one with python -m inspection "
                             "export") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ModelFileError(f"{path}: not an inspection export manifest")
    if manifest.get("version") != EXPORT_VERSION:
        raise ModelFileError(f"{path}: export version {manifest.get('version')!r}; this runtime reads version "
                             f"{EXPORT_VERSION}: export the model again with this version")
    return manifest


class ExportedModel:
    """An exported model on onnxruntime or OpenVINO, scoring as the torch model does (`Scorer`)."""

    def __init__(self, folder: str | os.PathLike, engine: str = "onnx", batch_size: int | None = None) -> None:
        if engine not in ENGINES:
            raise ParameterError(f"engine must be one of {list(ENGINES)}, not {engine!r}")
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        self.header = ModelHeader.from_dict(manifest.get("header"))  # checked: ModelFileError naming the field
        self.name: str = self.header.method
        self.runtime: str = engine
        self.calibration = self.header.calibration
        self.info = self.header.info
        self._fingerprint = str(manifest.get("fingerprint", ""))
        self.graph_entries = [GraphEntry.from_dict(entry) for entry in manifest.get("graphs", [])]
        if not self.graph_entries:
            raise ModelFileError(f"{self.folder / MANIFEST}: lists no graph")
        self.preprocessing: Preprocessing = ExportedPreprocessing(
            **self.header.preprocessing.to_dict(),
            exported=tuple(entry.working for entry in self.graph_entries))
        self.batch_size = int(batch_size or self.header.params.get("batch_size", 16))
        self.familiarity: Familiarity | None = None
        self.familiarity_bank: np.ndarray | None = None
        if manifest.get("familiarity") is not None:
            self.familiarity = Familiarity.from_dict(manifest["familiarity"])
            try:
                self.familiarity_bank = np.load(self.folder / BANK_FILE).astype(np.float32)
            except (OSError, ValueError) as error:
                raise ModelFileError(f"{self.folder / BANK_FILE}: {error}") from None
        self._graphs: dict[tuple[int, int], Any] = {}
        for entry in self.graph_entries:  # opened now: a missing or broken graph is said at load, not at scoring
            path = self.folder / f"{entry.stem}{_GRAPH_SUFFIX[engine]}"
            if not path.is_file():
                raise ModelFileError(f"{path.name} is missing from {self.folder}"
                                     + (": export with --format openvino" if engine == "openvino" else ""))
            self._graphs[entry.working] = (_OnnxGraph if engine == "onnx" else _OpenVinoGraph)(path)

    @property
    def fingerprint(self) -> str:
        """The exported model's identity: the fingerprint of the model file it was exported from."""
        return self._fingerprint

    def get_params(self) -> dict[str, Any]:
        return dict(self.header.params)

    def predict(self, images: Sequence[Any], batch_size: int | None = None) -> Prediction:
        """Maps (working resolution), scores and familiarity distances of paths or RGB arrays, as the torch
        model's `predict` gives them."""
        images = list(images)
        count = len(images)
        maps: list[Any] = [None] * count
        scores = np.zeros(count)
        geometries: list[Any] = [None] * count
        vectors: list[Any] = [None] * count
        for array, batch_geometries, indices in iter_arrays(images, self.preprocessing,
                                                            self._prepared_at_once(batch_size or self.batch_size)):
            # Every other working size was refused with its reason (ExportedPreprocessing.check_inspectable).
            graph = self._graphs[tuple(array.shape[-2:])]
            outputs = _in_slices(graph, graph_inputs(array, batch_geometries))
            for row, index in enumerate(indices):  # batches of varying sizes come out of order
                maps[index] = outputs["maps"][row].astype(np.float32)
                scores[index] = float(outputs["scores"][row])
                geometries[index] = batch_geometries[row]
                vectors[index] = outputs["vectors"][row]
        distances = None
        if self.familiarity_bank is not None and count:
            distances = nearest_cosine_distance(np.stack(vectors).astype(np.float32), self.familiarity_bank)
        return Prediction(stack_maps(maps, self.preprocessing.size), scores, geometries, self.calibration,
                          familiarity_distances=distances, familiarity=self.familiarity)

    def _prepared_at_once(self, batch_size: int) -> int:
        """How many images are prepared (and read ahead) at once: the batch, but no more than one slice of the
        smallest working size holds (`SLICE_PIXELS`). A graph takes no more in one call, so more would only hold
        memory and keep decoding threads busy beside the graph's own; for frames larger than a slice (KolektorSDD's)
        a batch of 16 is then scored exactly as 16 batches of 1."""
        smallest = min(height * width for height, width in self._graphs)
        return max(1, min(batch_size, SLICE_PIXELS // smallest))

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.folder)!r}, engine={self.runtime!r}, method={self.name!r})"


#: A graph runs over slices of a batch of at most this many working pixels: its nearest-neighbour search is one
#: block of (the slice's patches × the memory bank), which a whole batch of large frames would make hundreds of MB
#: and slower per image than one frame (bench/runtimes/).
SLICE_PIXELS = 2 * 256 * 256


def _in_slices(graph: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A graph's outputs for a batch, computed over slices of `SLICE_PIXELS`."""
    batch, _, height, width = inputs["images"].shape
    step = max(1, SLICE_PIXELS // (height * width))
    if step >= batch:
        return graph(inputs)
    parts = [graph({name: value[start:start + step] for name, value in inputs.items()})
             for start in range(0, batch, step)]
    return {name: np.concatenate([part[name] for part in parts]) for name in OUTPUTS}


def nearest_cosine_distance(vectors: np.ndarray, bank: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Cosine distance of each unit vector to its nearest bank vector (`familiarity.nearest_distance` in numpy)."""
    best = np.full(len(vectors), -2.0, np.float32)
    for first in range(0, len(bank), chunk):  # slices of the bank: memory stays bounded
        best = np.maximum(best, (vectors @ bank[first:first + chunk].T).max(axis=1))
    return np.clip(np.float32(1.0) - best, 0.0, None).astype(np.float64)  # float32 as in torch, then widened


def preferred_engine(folder: str | os.PathLike) -> str:
    """The engine "auto" means: OpenVINO where the folder holds its graphs and it is installed (faster than
    onnxruntime on every set measured, and as exact: bench/runtimes/), else onnxruntime."""
    folder = Path(folder)
    graphs = [GraphEntry.from_dict(entry) for entry in read_manifest(folder).get("graphs", [])]
    if graphs and all((folder / f"{entry.stem}.xml").is_file() for entry in graphs):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "onnx"
        return "openvino"
    return "onnx"


def load_export(folder: str | os.PathLike, engine: str = "auto", batch_size: int | None = None) -> ExportedModel:
    """Open an exported folder on `engine`: "onnx" (onnxruntime), "openvino", or "auto" (`preferred_engine`)."""
    return ExportedModel(folder, preferred_engine(folder) if engine == "auto" else engine, batch_size)

