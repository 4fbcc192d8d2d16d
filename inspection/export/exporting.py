"""`inspection export`: a fitted model written as a folder `inspection.runtime` scores without torch.

Each graph is the model's own scoring traced at one working size — backbone, the method's scoring after it (for
PatchCore the nearest-neighbour distance to the memory bank as one matrix product), upsampling and blur, aspect
mode's padding made NaN — and the familiarity vector beside it. The working size is fixed per graph (a backbone's
padding is computed when it is traced); the batch size is free. Nothing is re-implemented for the export: the
graph runs the same torch code as `predict`, so the two can only differ by floating-point order.
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
from ..model.familiarity import describe_images, squeeze_picture
from ..model.modes import content_sizes, without_padding
from ..runtime.exported import (
    BANK_FILE,
    ENGINES,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    INPUT,
    MANIFEST,
    OUTPUTS,
    GraphEntry,
    graph_key,
)

#: The ONNX opset: 18 has Resize with antialiasing (the familiarity squeeze) and is read by onnxruntime and OpenVINO.
OPSET = 18


class _ScoringGraph(torch.nn.Module):
    """The model's scoring of a normalised batch at one working size: (maps, scores, familiarity vectors)."""

    def __init__(self, model: AnomalyModel, geometry: Geometry) -> None:
        super().__init__()
        self.model = model
        self.geometry = geometry

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.model.preprocessing.mode == "aspect":
            content = content_sizes(images, [self.geometry.seen]).expand(images.shape[0], 2)
            scored = self.model._score_detailed(images, False, content=content)
            maps = without_padding(scored.maps, content)
        else:
            scored = self.model._score_detailed(images, False)
            maps = scored.maps
        if self.model.familiarity_bank is not None:
            # `_describe` squeezes each image's content apart (their sizes may differ); here they share one size.
            height, width = self.geometry.seen
            rgb = self.model.unit_range(images).clamp(0, 1)[:, :, :height, :width]
            # The squeeze to the descriptor's square as two matrix products (ONNX has no antialiased bilinear
            # resize that torch exports): the same linear map, its weights taken from torch's own resize.
            rows, columns = squeeze_weights(height, width, images.device)
            vectors = describe_images(torch.matmul(torch.matmul(rows, rgb), columns.T))
        else:  # no check: an empty vector keeps the graph's outputs the same for every model
            vectors = images.new_zeros(images.shape[0], 0)
        return maps.float(), scored.scores.float(), vectors.float()


def squeeze_weights(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The familiarity squeeze (`squeeze_picture`, a separable linear resize) as its two weight matrices: rows
    [side, height] and columns [side, width], so that squeeze(x) = rows @ x @ columns.T."""
    # Each basis image holds a single 1 along one axis and is one pixel long along the other, which the resize keeps
    # as it is: what comes out is one column of that axis's weights.
    rows = squeeze_picture(torch.eye(height, device=device).view(height, 1, height, 1).expand(-1, 3, -1, -1))
    columns = squeeze_picture(torch.eye(width, device=device).view(width, 1, 1, width).expand(-1, 3, -1, -1))
    return rows[:, 0, :, 0].T.contiguous(), columns[:, 0, 0, :].T.contiguous()


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
    reason = type(model).capabilities.export_refused
    if reason:
        return f"{model.name} cannot be exported: {reason}"
    if model.preprocessing.mode == "tiles":
        return (f"{model.name} in tiles mode cannot be exported yet (its tiles are stitched outside the network); "
                "fit it in aspect mode, which sees the whole part too")
    return ""


def example_geometries(model: AnomalyModel, image_sizes: Sequence[tuple[int, int]]) -> list[Geometry]:
    """One geometry per distinct working size: of the given (height, width) image sizes, or the model's only one."""
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
        distinct.setdefault(graph_key(geometry), geometry)
    return list(distinct.values())


def sizes_of(paths: Sequence[str | os.PathLike]) -> list[tuple[int, int]]:
    """The (height, width) of the images in files and folders, as the scoring paths decode them."""
    sizes = []
    for path in paths:
        files = list_images(Path(path)) if Path(path).is_dir() else [Path(path)]
        for file in files:
            sizes.append(load_image_with_size(file, max_side=DISPLAY_MAX_SIDE)[0].shape[:2])
    return sizes


def _example_batch(model: AnomalyModel, geometry: Geometry, count: int, seed: int) -> torch.Tensor:
    """A normalised batch of smooth random pictures of the geometry's image size, through the model's preprocessing
    (tracing and the parity check)."""
    import cv2

    rng = np.random.default_rng(seed)
    size = (geometry.original_width, geometry.original_height)
    pictures = [cv2.resize(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), size, interpolation=cv2.INTER_CUBIC)
                for _ in range(count)]
    return model.preprocessing.normalize(np.stack([model.preprocessing.apply_geometry(picture)[0]
                                                   for picture in pictures]))


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
    model.extractor.eval() if hasattr(model, "extractor") else None
    entries, map_gap, score_gap = [], 0.0, 0.0
    try:
        for geometry in geometries:
            stem = f"graph-{geometry.height}x{geometry.width}" + (
                f"-content-{geometry.seen[0]}x{geometry.seen[1]}" if geometry.seen != (geometry.height,
                                                                                         geometry.width) else "")
            entry = GraphEntry(stem, (geometry.height, geometry.width), geometry.seen)
            _write_onnx(model, geometry, staging / f"{stem}.onnx")
            if "openvino" in formats:
                _write_openvino(staging / f"{stem}.onnx", staging / f"{stem}.xml")
            gaps = _check_parity(model, geometry, staging / f"{stem}.onnx")
            map_gap, score_gap = max(map_gap, gaps[0]), max(score_gap, gaps[1])
            entries.append(entry)
        if "onnx" not in formats:
            for entry in entries:
                (staging / f"{entry.stem}.onnx").unlink()
        familiarity = None
        if model.familiarity is not None and model.familiarity_bank is not None:
            np.save(staging / BANK_FILE, model.familiarity_bank.float().cpu().numpy())
            familiarity = model.familiarity.to_dict()
        manifest = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "fingerprint": model.fingerprint,
                    "method": model.name, "formats": list(formats), "input": INPUT, "outputs": list(OUTPUTS),
                    "opset": OPSET, "torch_version": torch.__version__,
                    "graphs": [entry.to_dict() for entry in entries], "familiarity": familiarity,
                    "parity": {"max_map_difference": map_gap, "max_score_difference": score_gap},
                    "header": model.header().to_dict()}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, tuple(entries), tuple(formats), map_gap, score_gap)


def _write_onnx(model: AnomalyModel, geometry: Geometry, path: Path) -> None:
    graph = _ScoringGraph(model, geometry).eval()
    example = _example_batch(model, geometry, 2, model.seed).to(model.torch_device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values fixed at this working size
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=list(OUTPUTS),
                          dynamic_axes={INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}},
                          opset_version=OPSET, dynamo=False)


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """OpenVINO IR converted by OpenVINO's own converter from the ONNX graph."""
    try:
        import openvino
    except ImportError:
        raise ParameterError("openvino is not installed: pip install openvino (or export --format onnx)") from None
    openvino.save_model(openvino.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _check_parity(model: AnomalyModel, geometry: Geometry, onnx_path: Path) -> tuple[float, float]:
    """Run the ONNX graph on an example batch of a size other than the traced one and compare it with the torch
    model; raise when the maps differ by more than 1e-3 of their range."""
    from ..runtime.exported import _OnnxGraph

    example = _example_batch(model, geometry, 3, model.seed + 1)
    with torch.no_grad():
        expected = _ScoringGraph(model, geometry).eval()(example.to(model.torch_device))
    got = _OnnxGraph(onnx_path)(example.numpy())
    maps, scores = expected[0].cpu().numpy(), expected[1].cpu().numpy()
    finite = np.isfinite(maps)
    if not np.array_equal(finite, np.isfinite(got["maps"])):
        raise RuntimeError(f"{onnx_path.name}: the exported maps mark other pixels as padding than the model's")
    map_gap = float(np.abs(maps[finite] - got["maps"][finite]).max()) if finite.any() else 0.0
    score_gap = float(np.abs(scores - got["scores"]).max())
    spread = float(maps[finite].max() - maps[finite].min()) if finite.any() else 1.0
    if map_gap > 1e-3 * max(spread, 1e-12):
        raise RuntimeError(f"{onnx_path.name}: the exported graph's maps differ from the model's by {map_gap:.3g} "
                           f"(more than 1e-3 of their range {spread:.3g}); the export is not kept")
    return map_gap, score_gap
