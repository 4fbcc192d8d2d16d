"""Where the app's images come from: the demo, a local folder (and category), or a downloaded MVTec category."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from inspection.data.datasets import GOOD, Dataset, list_categories, open_dataset
from inspection.errors import DatasetError, FolderNotFoundError

from .library import models_dir

#: The file, in the models folder, that remembers the last local folder opened (for the next browser session).
LAST_FOLDER_FILE = "last-folder.json"


@dataclass(frozen=True)
class DataSource:
    """Where the images come from: the demo, a local folder (and category), or a downloaded MVTec category."""

    kind: str  # "demo" | "folder" | "download"
    root: str
    category: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "demo":
            return "Built-in demo dataset (surface)"
        return f"{self.root}" + (f" · {self.category}" if self.category else "")


def folder_categories(path: str | os.PathLike) -> list[str] | None:
    """Categories of a root of MVTec categories; None when `path` is itself a dataset; FolderNotFoundError when it
    does not exist; DatasetError otherwise."""
    folder = Path(path).expanduser()
    if not str(path).strip():
        raise DatasetError("no folder given: type the path of a dataset folder")
    if not folder.exists():
        raise FolderNotFoundError(str(folder))  # "Folder not found: /the/path"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder: type the path of a dataset folder")
    if (folder / "train" / GOOD).is_dir() or (folder / GOOD).is_dir():
        return None
    categories = list_categories(folder)
    if not categories:
        raise DatasetError(f"{folder}: neither a dataset (train/good/ or good/) nor a folder of MVTec categories")
    return categories


def open_source(source: DataSource) -> Dataset:
    """The Dataset of a data source (DatasetError with a clear message when it is not usable)."""
    return open_dataset(source.root, source.category)


def known_datasets(data_dir: str | os.PathLike) -> list[tuple[str, str | None]]:
    """(root, category) of datasets already in the data folder: categories of its subfolders, or the subfolders."""
    data_dir = Path(data_dir).expanduser()
    found: list[tuple[str, str | None]] = []
    if not data_dir.is_dir():
        return found
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if (entry / "train" / GOOD).is_dir() or (entry / GOOD).is_dir():
            found.append((str(entry), None))
        else:
            try:
                found.extend((str(entry), category) for category in list_categories(entry))
            except DatasetError:
                continue
    return found


def last_folder_file(folder: str | os.PathLike | None = None) -> Path:
    """Where the last opened local folder is remembered: `last-folder.json` in the models folder."""
    return Path(folder if folder is not None else models_dir()) / LAST_FOLDER_FILE


def save_last_folder(source: DataSource, folder: str | os.PathLike | None = None) -> bool:
    """Remember a local folder source for the next session (atomic; False, never an error, when it cannot be
    written: remembering is a convenience, and the models folder may be read-only)."""
    if source.kind != "folder":
        return False
    path = last_folder_file(folder)
    aside = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: two sessions saving at once never leave half a file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".last-folder-", suffix=".tmp",
                                         delete=False, encoding="utf-8") as handle:
            aside = Path(handle.name)
            json.dump({"root": str(Path(source.root).expanduser().absolute()), "category": source.category},
                      handle)
        os.replace(aside, path)
    except OSError:
        if aside is not None:
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)
        return False
    return True


def load_last_folder(folder: str | os.PathLike | None = None) -> DataSource | None:
    """The last local folder opened, when it is remembered and still there; None otherwise (never an error)."""
    try:
        stored = json.loads(last_folder_file(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("root"), str) or not stored["root"].strip():
        return None
    category = stored.get("category")
    category = category if isinstance(category, str) and category else None
    source = DataSource("folder", stored["root"], category)
    base = Path(source.root).expanduser() / (category or "")
    return source if base.is_dir() else None  # a folder since moved or unmounted is not offered
