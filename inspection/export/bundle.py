"""A model exported for the line from where it lives (the app's Train page): beside its file, at the sizes of its
training images, in every format this machine can write, and zipped for a download to the line PC."""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

from ..errors import ParameterError
from ..model.base import IMAGE_KINDS_KEY, AnomalyModel
from ..model.modelfile import resolve_model_path
from ..registry import load_model
from ..runtime.exported import MANIFEST
from .exporting import ExportSummary, export_model

#: The folder beside the model files that holds their exports (one folder per model, named as its file).
EXPORTS_FOLDER = "exports"


def export_formats() -> tuple[str, ...]:
    """The formats this machine can write and check: ONNX (needs onnx and onnxruntime), and OpenVINO IR where
    OpenVINO is installed."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ParameterError(f"exporting needs {' and '.join(missing)}, which are not installed here: pip install "
                             "\"inspection[export]\"")
    return ("onnx", "openvino") if importlib.util.find_spec("openvino") is not None else ("onnx",)


def training_sizes(model: AnomalyModel) -> list[tuple[int, int]]:
    """The (height, width) of the model's training images as fit recorded them ([] when it did not: too many
    sizes, or a model made before it recorded them)."""
    sizes = (model.info.extra.get(IMAGE_KINDS_KEY) or {}).get("sizes") or []
    return [(int(height), int(width)) for height, width in sizes]


def export_path(model_path: str | os.PathLike) -> Path:
    """Where `export_beside` writes the export of a model file."""
    path = Path(model_path)
    return path.parent / EXPORTS_FOLDER / path.stem


def current_export(model_path: str | os.PathLike) -> Path | None:
    """The export `export_beside` wrote of a model file, when it is of the file as it is now (written after the file
    last changed: teaching, a refit or a new threshold rewrite it); None otherwise."""
    folder = export_path(model_path)
    manifest = folder / MANIFEST
    if not manifest.is_file() or manifest.stat().st_mtime < Path(model_path).stat().st_mtime:
        return None
    return folder


def export_beside(model_path: str | os.PathLike, model: AnomalyModel | None = None) -> ExportSummary:
    """Export a model file to `export_path`, replacing an earlier export: for a model whose working size follows
    the image (aspect, tiles), one graph per size its training images had — the frames the line will send."""
    path = resolve_model_path(model_path)
    formats = export_formats()
    model = model if model is not None else load_model(path)
    sizes: list[tuple[int, int]] = []
    if model.preprocessing.mode in ("aspect", "tiles"):
        sizes = training_sizes(model)
        if not sizes:
            raise ParameterError(f"{path.name} works in {model.preprocessing.mode} mode and does not record the sizes "
                                 "of its training images (too many of them, or an older file): export it with "
                                 f"`inspection export --model {path} --image-size WIDTHxHEIGHT --out DIR`, giving the "
                                 "sizes of the line's frames")
    return export_model(model, export_path(path), formats, sizes)


def zip_export(folder: str | os.PathLike) -> Path:
    """The export folder as one zip file beside it (`NAME.zip`, replaced), its files under `NAME/`: what a browser
    downloads and the line PC unpacks. Written to a temporary name first, so a half-written zip is never served."""
    folder = Path(folder)
    target = folder.with_suffix(".zip")
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, Path(folder.name) / file.relative_to(folder))
    os.replace(partial, target)
    return target
