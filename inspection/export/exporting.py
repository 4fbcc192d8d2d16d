"""`inspection export`: a fitted model written as a folder `inspection.runtime` scores without torch.

Each graph is the model's own scoring traced at one working size — backbone, the method's scoring after it (for
PatchCore the nearest-neighbour distance to the memory bank as one matrix product), upsampling and blur, aspect
mode's padding made NaN, tiles mode's cutting and stitching — and the familiarity vector beside it. The working
size is fixed per graph (a backbone's padding and the tile grid are computed when it is traced); the batch size is
free. Nothing is re-implemented for the export: the graph runs the same torch code as `predict`, so the two can
only differ by floating-point order.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.images import list_images, load_image_with_size
from ..data.preprocess import DISPLAY_MAX_SIDE, Geometry
from ..errors import ParameterError
from ..model.base import AnomalyModel
from ..model.familiarity import describe_images
from ..model.modes import score_tiled, without_padding
from ..runtime.exported import (
    BANK_FILE,
    ENGINES,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    INPUTS,
    MANIFEST,
    OUTPUTS,
    GraphEntry,
    graph_inputs,
    load_export,
)

#: The ONNX opset: 18 has Resize with antialiasing (the familiarity squeeze) and is read by onnxruntime and OpenVINO.
OPSET = 18


class _ScoringGraph(torch.nn.Module):
    """The model's scoring of a normalised batch at one working size: (maps, scores, familiarity vectors).

    Inputs besides the images (`runtime.exported.graph_inputs` makes them): each image's content size in the working
    grid (aspect mode: the rest is padding), and its familiarity squeeze as two matrices — so that one graph takes
    every picture whose working size is its own."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, content: torch.Tensor, squeeze_rows: torch.Tensor,
                squeeze_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        preprocessing = self.model.preprocessing
        if preprocessing.mode == "aspect":
            scored = self.model._score_detailed(images, False, content=content)
            maps = without_padding(scored.maps, content)
        elif preprocessing.mode == "tiles":
            # The tile grid is fixed by the graph's working size, so cutting and stitching trace as fixed slices.
            scored = score_tiled(images, lambda tiles: self.model._score_detailed(tiles, False), preprocessing.crop,
                                 preprocessing.tile_overlap, batch_size=None)
            maps = scored.maps
        else:
            scored = self.model._score_detailed(images, False)
            maps = scored.maps
        if self.model.familiarity_bank is not None:
            # `_describe` squeezes each image's content with torch's antialiased resize, which ONNX cannot express;
            # the same linear map as two matrix products (zero beyond the content) can.
            rgb = self.model.unit_range(images).clamp(0, 1)
            squeezed = torch.matmul(torch.matmul(squeeze_rows[:, None], rgb),
                                    squeeze_columns[:, None].transpose(-1, -2))
            vectors = describe_images(squeezed)
        else:  # no check: an empty vector keeps the graph's outputs the same for every model
            vectors = images.new_zeros(images.shape[0], 0)
        return maps.float(), scored.scores.float(), vectors.float()


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: the folder, its graphs and formats, and the largest difference from the torch model
    on the example images (map and score, raw units) — checked before anything is kept."""

    folder: Path
    graphs: tuple[GraphEntry, ...]
    formats: tuple[str, ...]
    max_map_difference: float
    max_score_difference: float


def refusal(model: AnomalyModel) -> str:
    """Why the model cannot be exported (empty when it can)."""
    reason = model.export_refusal()
    if reason:
        return f"{model.name} cannot be exported: {reason}"
    return ""


def example_geometries(model: AnomalyModel, image_sizes: Sequence[tuple[int, int]]) -> list[Geometry]:
    """One geometry per distinct working size (the first image size giving it): of the given (height, width) image
    sizes, or the model's only one."""
    preprocessing = model.preprocessing
    if not image_sizes:
        if preprocessing.mode in ("aspect", "tiles"):
            raise ParameterError(f"the model works in {preprocessing.mode} mode, where the working size follows the "
                                 "image: say which frames the line sends, with --image-size WIDTHxHEIGHT (or --example "
                                 "IMAGES)")
        image_sizes = [preprocessing.size]
    distinct: dict[tuple, Geometry] = {}
    for height, width in image_sizes:
        preprocessing.check_inspectable(height, width)
        geometry = preprocessing.geometry(height, width)
        distinct.setdefault((geometry.height, geometry.width), geometry)
    return list(distinct.values())


def sizes_of(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int]]:
    """The (height, width) of the images in files and folders, as the scoring paths decode them."""
    sizes = []
    for path in paths:
        files = list_images(Path(path)) if Path(path).is_dir() else [Path(path)]
        for file in files:
            sizes.append(load_image_with_size(file, max_side=DISPLAY_MAX_SIDE)[0].shape[:2])
    return sizes


def example_pictures(geometry: Geometry, count: int, seed: int) -> list[np.ndarray]:
    """Smooth random RGB pictures of the geometry's image size (tracing and the parity check)."""
    import cv2

    rng = np.random.default_rng(seed)
    size = (geometry.original_width, geometry.original_height)
    return [cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)
            for _ in range(count)]


def export_model(model: AnomalyModel, out: str | os.PathLike, formats: Sequence[str] = ("onnx",),
                 image_sizes: Sequence[tuple[int, int]] = ()) -> ExportSummary:
    """Write `model` as an exported folder at `out` (replaced if it is an earlier export): one graph per working size
    of `image_sizes` ((height, width) of the line's frames; fixed-size modes need none), in each of `formats`.

    The exported graphs are run once on example batches and compared with the torch model before the folder is
    kept: a graph that does not reproduce the model's maps within 1e-3 of their range is an error, not a file."""
    reason = refusal(model)
    if reason:
        raise ParameterError(reason)
    unknown = [name for name in formats if name not in ENGINES]
    if unknown or not formats:
        raise ParameterError(f"formats must be among {list(ENGINES)}, got {list(formats)}")
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise ParameterError(f"{out} exists and is not an earlier export: choose an empty or new folder")
    geometries = example_geometries(model, image_sizes)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model._ensure_setup()
    entries = []
    try:
        for geometry in geometries:
            entry = GraphEntry(f"graph-{geometry.height}x{geometry.width}", (geometry.height, geometry.width))
            _write_onnx(model, geometry, staging / f"{entry.stem}.onnx")
            if "openvino" in formats:
                _write_openvino(staging / f"{entry.stem}.onnx", staging / f"{entry.stem}.xml")
            entries.append(entry)
        familiarity = None
        if model.familiarity is not None and model.familiarity_bank is not None:
            np.save(staging / BANK_FILE, model.familiarity_bank.float().cpu().numpy())
            familiarity = model.familiarity.to_dict()
        manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "fingerprint": model.fingerprint,
                    "method": model.name, "formats": list(formats), "inputs": list(INPUTS), "outputs": list(OUTPUTS),
                    "opset": OPSET, "torch_version": torch.__version__,
                    "graphs": [entry.to_dict() for entry in entries], "familiarity": familiarity,
                    "header": model.header().to_dict()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        map_gap, score_gap = _check_parity(model, staging, geometries, formats)
        manifest["parity"] = {"max_map_difference": map_gap, "max_score_difference": score_gap}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if "onnx" not in formats:
            for entry in entries:
                (staging / f"{entry.stem}.onnx").unlink()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, tuple(entries), tuple(formats), map_gap, score_gap)


def _write_onnx(model: AnomalyModel, geometry: Geometry, path: Path) -> None:
    pictures = [model.preprocessing.apply_geometry(picture) for picture in example_pictures(geometry, 2, model.seed)]
    images = model.preprocessing.normalize_array(np.stack([working for working, _ in pictures]))
    inputs = graph_inputs(images, [geometry for _, geometry in pictures])
    example = tuple(torch.from_numpy(inputs[name]).to(model.torch_device) for name in INPUTS)
    graph = _ScoringGraph(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Once in torch first: what is built on first use (the familiarity backbone) must not be traced being built.
        graph(*example)
        warnings.simplefilter("ignore")  # the tracer's notes on Python values fixed at this working size
        torch.onnx.export(graph, example, str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)},
                          opset_version=OPSET, dynamo=False)


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR converted by OpenVINO's own converter from the ONNX graph."""
    try:
        import openvino
    except ImportError:
        raise ParameterError("openvino is not installed: pip install openvino (or export --format onnx)") from None
    openvino.save_model(openvino.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _check_parity(model: AnomalyModel, folder: Path, geometries: Sequence[Geometry], formats: Sequence[str]
                  ) -> tuple[float, float]:
    """Score example pictures with the exported folder (each format) and with the torch model, and refuse the export
    when the maps differ by more than 1e-3 of their range: (largest map, score difference)."""
    pictures = [picture for index, geometry in enumerate(geometries)
                for picture in example_pictures(geometry, 3, model.seed + 1 + index)]
    expected = model.predict(pictures)
    finite = np.isfinite(expected.raw_maps)
    spread = float(np.ptp(expected.raw_maps[finite])) if finite.any() else 1.0
    map_gap = score_gap = 0.0
    for engine in formats:
        got = load_export(folder, engine).predict(pictures)
        if not np.array_equal(finite, np.isfinite(got.raw_maps)):
            raise RuntimeError(f"the {engine} export marks other pixels as padding than the model does")
        map_gap = max(map_gap, float(np.abs(expected.raw_maps[finite] - got.raw_maps[finite]).max()))
        score_gap = max(score_gap, float(np.abs(expected.raw_scores - got.raw_scores).max()))
        if map_gap > 1e-3 * max(spread, 1e-12):
            raise RuntimeError(f"the {engine} export's maps differ from the model's by {map_gap:.3g}, more than 1e-3 "
                               f"of their range ({spread:.3g}): the export is not kept")
    return map_gap, score_gap
