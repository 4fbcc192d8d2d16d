"""The models folder: list trained models from their file headers (weights never loaded), rename, delete.

One model is one ``*.safetensors`` file. The folder is env ``INSPECTION_MODELS_DIR``, else ``./models``.
A model's display name lives in its metadata (``info.display_name``); renaming also renames the file to a
slug of that name, so the folder stays readable for people who look into it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspection.data.preprocess import Preprocessing
from inspection.errors import ModelFileError
from inspection.features.backbones import BACKBONES
from inspection.model.header import ModelHeader
from inspection.model.modelfile import MODEL_SUFFIX, read_model_header, update_info
from inspection.registry import methods

from .tables import metric_cells

MODELS_DIR_ENV = "INSPECTION_MODELS_DIR"
DEFAULT_MODELS_DIR = "models"
MAX_NAME_LENGTH = 80


def models_dir() -> Path:
    """The models folder: env INSPECTION_MODELS_DIR, else ./models (relative to the working directory)."""
    configured = os.environ.get(MODELS_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(DEFAULT_MODELS_DIR)


@dataclass(frozen=True)
class ModelEntry:
    """What the app lists about one model file, read from its header alone."""

    path: Path
    name: str
    method: str
    backbone: str
    category: str
    created: str  # ISO 8601, UTC
    metrics: dict[str, Any] = field(default_factory=dict)
    data_path: str = ""  # the dataset (category folder) it was trained and evaluated on
    modified: float = 0.0  # file mtime: part of every cache key, so a rewritten file is never served stale
    protocol: str = "aligned"  # the evaluation protocol it was trained and evaluated under
    resize: str = ""  # resize mode and working size, e.g. "aspect 256" (`describe_resize`)

    @property
    def label(self) -> str:
        """A one-line label for pickers: name · method/backbone · category."""
        parts = [self.method + (f"/{self.backbone}" if self.backbone else "")]
        if self.category:
            parts.append(self.category)
        return f"{self.name} ({', '.join(parts)})"

    def row(self) -> dict[str, Any]:
        """A table row: name, date, category, method, backbone, resize mode and size, and the headline test
        metrics (the columns are described by `tables.MODEL_COLUMNS`)."""
        return {"name": self.name, "created": format_created(self.created), "category": self.category or "—",
                "method": self.method, "backbone": self.backbone or "—", "resize": self.resize or "—",
                "protocol": self.protocol, **metric_cells(self.metrics), "file": self.path.name}


def format_created(created: str) -> str:
    """ISO timestamp → 'YYYY-MM-DD HH:MM' in UTC; the raw text when it does not parse."""
    try:
        moment = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return created or "—"
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M")


def describe_resize(preprocessing: Preprocessing) -> str:
    """The resize mode and working size in a few characters, as the tables and column headers show them:
    'center_crop 256→224' (shorter side to 256, centre 224 × 224), 'full 224' (the whole image to 224 × 224),
    'aspect 256' (shorter side to 256, aspect kept), 'tiles 448 (224 px)' (shorter side to 448, 224 px tiles)."""
    mode, resize, crop = preprocessing.mode, preprocessing.resize, preprocessing.crop
    if mode == "center_crop":
        return f"{mode} {resize}→{crop}"
    if mode == "full":
        return f"{mode} {crop}"
    if mode == "tiles":
        return f"{mode} {resize} ({crop} px)"
    return f"{mode} {resize}"


def entry_from_header(path: Path, header: ModelHeader) -> ModelEntry:
    """A ModelEntry from a model file's typed header."""
    info = header.info
    return ModelEntry(path=path, name=info.display_name or path.stem, method=header.method,
                      backbone=header.backbone.name if header.backbone is not None else "",
                      category=info.category, created=info.created, metrics=dict(info.metrics),
                      data_path=info.data_path, modified=path.stat().st_mtime,
                      protocol=info.alignment_protocol().name, resize=describe_resize(header.preprocessing))


@dataclass(frozen=True)
class UnusableModel:
    """A file in the models folder that cannot be used, and why (listed, never raised)."""

    path: Path
    reason: str

    @property
    def message(self) -> str:
        return f"{self.path.name}: unusable: {self.reason}"


def _check_known(path: Path, header: ModelHeader) -> None:
    """Refuse a header whose method or backbone this version does not know (it could not be loaded)."""
    if header.method not in methods():
        raise ModelFileError(f"method {header.method!r} is unknown to this version (known: {', '.join(methods())})")
    if header.backbone is not None and header.backbone.name not in BACKBONES:
        raise ModelFileError(f"backbone {header.backbone.name!r} is unknown to this version")


def scan_models(folder: str | os.PathLike | None = None) -> tuple[list[ModelEntry], list[UnusableModel]]:
    """(usable models newest first, unusable files): reading only headers, never raising for a bad file."""
    folder = Path(folder) if folder is not None else models_dir()
    if not folder.is_dir():
        return [], []
    entries, unusable = [], []
    for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
        if path.name.startswith("."):
            continue  # temporaries of an atomic write in progress
        try:
            header = read_model_header(path)
            _check_known(path, header)
            entries.append(entry_from_header(path, header))
        except (ModelFileError, OSError) as error:
            reason = str(error)
            unusable.append(UnusableModel(path, reason.removeprefix(f"{path.name}: ")))
    entries.sort(key=lambda entry: (entry.created, entry.path.name), reverse=True)
    return entries, unusable


def list_models(folder: str | os.PathLike | None = None) -> tuple[list[ModelEntry], list[str]]:
    """(usable models newest first, one message per unusable file naming it and the reason)."""
    entries, unusable = scan_models(folder)
    return entries, [item.message for item in unusable]


def slugify(name: str) -> str:
    """A file-name-safe version of a display name: letters, digits, '-', '_' and '.'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return slug[:MAX_NAME_LENGTH] or "model"


def validate_name(name: str) -> str:
    """A display name stripped and checked: not empty, not too long, printable."""
    cleaned = (name or "").strip()
    if not cleaned:
        raise ValueError("a model name must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValueError(f"a model name must be at most {MAX_NAME_LENGTH} characters, got {len(cleaned)}")
    if not cleaned.isprintable():
        raise ValueError(f"a model name must be printable text, got {cleaned!r}")
    return cleaned


def unique_model_path(folder: str | os.PathLike, name: str) -> Path:
    """A free path ``folder/<slug>.safetensors`` (``-2``, ``-3``… appended when taken)."""
    folder = Path(folder)
    stem = slugify(name)
    candidate = folder / f"{stem}{MODEL_SUFFIX}"
    counter = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{counter}{MODEL_SUFFIX}"
        counter += 1
    return candidate


def default_model_name(method: str, category: str, when: datetime | None = None) -> str:
    """E.g. 'surface patchcore 2024-05-01 12:30'."""
    when = when or datetime.now()
    return f"{category or 'data'} {method} {when:%Y-%m-%d %H:%M}"


def _require_model_file(path: str | os.PathLike, folder: str | os.PathLike | None) -> Path:
    path = Path(path)
    if path.suffix != MODEL_SUFFIX:
        raise ModelFileError(f"{path.name}: not a model file ({MODEL_SUFFIX})")
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist (deleted meanwhile?)")
    if folder is not None and path.resolve().parent != Path(folder).resolve():
        raise ModelFileError(f"{path} is not in the models folder {folder}")
    return path


def rename_model(path: str | os.PathLike, new_name: str, folder: str | os.PathLike | None = None) -> Path:
    """Give a model a new display name and a matching file name; returns the new path."""
    path = _require_model_file(path, folder)
    new_name = validate_name(new_name)
    target = path.with_name(f"{slugify(new_name)}{MODEL_SUFFIX}")
    if target != path and target.exists():
        raise ValueError(f"a model file named {target.name} already exists: choose another name")
    update_info(path, display_name=new_name)
    if target != path:
        os.replace(path, target)
    return target


def delete_model(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> None:
    """Delete one model file (only a *.safetensors file, and only inside `folder` when given)."""
    _require_model_file(path, folder).unlink()
