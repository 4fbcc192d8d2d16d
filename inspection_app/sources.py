"""Where the app's images come from: the demo, a local folder (and category), or a downloaded MVTec category."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inspection.data.datasets import GOOD, Dataset, list_categories, open_dataset
from inspection.errors import DatasetError


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
    """Categories of a root of MVTec categories; None when `path` is itself a dataset; DatasetError otherwise."""
    folder = Path(path).expanduser()
    if not str(path).strip():
        raise DatasetError("no folder given: type the path of a dataset folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
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
