"""Where results go: destinations checked before long work starts, and CSV files safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputError

# A cell a spreadsheet would run as a formula starts with one of these (OWASP's list, tab and return included).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, target: Path) -> None:
    """Create and remove a file in `folder` (os.access says yes to root even where writing fails)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"cannot write {target}: {folder} is not writable ({error.strerror or error})") from None


def check_output_folder(folder: str | os.PathLike) -> Path:
    """A folder results can be written into (existing, or creatable in a writable place); nothing is created."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder: give a folder for the results")
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir():
        raise OutputError(f"cannot create the folder {folder}: {ancestor} is not a folder")
    _probe_writable(ancestor, folder)
    return folder


def check_output_file(path: str | os.PathLike) -> Path:
    """A file path that can be written (replacing an existing file is fine; a folder there is not)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name to write")
    check_output_folder(path.parent)
    return path


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: a leading =, +, -, @ (not a plain number) gets a quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """Rows written as CSV with every cell made safe (`safe_cell`)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows({key: safe_cell(value) for key, value in row.items()} for row in rows)
    return path
