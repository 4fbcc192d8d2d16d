"""Scoring files and folders: one CSV row and one result picture per image, bad files reported, memory bounded,
and resumable.

Used by `python -m inspection predict`, the app's Batch page and the bench's memory measurements. Images are
decoded and scored in chunks (never all maps at once), so thousands of images cost the memory of one chunk.
Each chunk's rows are appended to a state file in the output folder as soon as they are scored: a run that is
interrupted, or run again on the same folder, skips every file already scored with the same model, recognised by
its path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .data.images import IMAGE_EXTENSIONS, list_images, load_image
from .errors import ImageLoadError, ModelFileError, ParameterError
from .model.base import AnomalyModel
from .outputs import write_csv
from .results import DISPLAY_MAX_SIDE, image_result

CSV_NAME = "predictions.csv"
#: One JSON line per scored file (after a first line naming the model): what a rerun skips.
STATE_NAME = "predict-state.jsonl"
PREDICTION_FIELDS = ("file", "score", "raw_score", "verdict", "regions", "largest_region_area", "overlay", "error")
#: Which images get an overlay picture: every one, those judged defects, or none (the report draws its own).
OVERLAY_CHOICES = ("all", "defects", "none")
# Images decoded for one forward pass at most (besides the batch size): bounds memory with large images.
_CHUNK_PIXELS = 64_000_000
# Settings that do not change a model's results (where it runs, how many images per pass).
_NOT_RESULTS = frozenset({"device", "batch_size"})

Progress = Callable[[int, int], None]  # (files done, files in all)


@dataclass(frozen=True)
class BatchSummary:
    """How a batch went: images scored (this run and before), flagged as defects, unreadable; skipped because an
    earlier run had scored them; where the CSV is; and every file's row (input order)."""

    scored: int
    flagged: int
    failed: int
    csv_path: Path
    skipped: int = 0
    rows: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    restarted: bool = False  # results of an earlier run were there but made with another model (or thresholds)

    @property
    def out(self) -> Path:
        return self.csv_path.parent


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, its name in the CSV): relative to the folder it was found in; the full path for a file given directly.

    Folders that hold no image are named on stderr; when nothing at all is found, a ParameterError says so."""
    files: list[tuple[Path, str]] = []
    empty: list[str] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                empty.append(str(path))
            files.extend((file, str(file.relative_to(path))) for file in found)
        else:
            files.append((path, str(path)))
    if not files and empty:
        raise ParameterError(f"no images in {', '.join(empty)}: a folder is read for files ending in "
                             f"{', '.join(sorted(IMAGE_EXTENSIONS))} (not in its sub-folders)")
    for folder in empty:
        print(f"warning: folder {folder} holds no images", file=sys.stderr)
    return files


def model_fingerprint(model: AnomalyModel) -> str:
    """What makes two runs' results the same: the model (method, creation, settings) and its calibration."""
    calibration = model.calibration
    identity = {"method": model.name, "created": model.info.created,
                "params": {key: value for key, value in model.params.items() if key not in _NOT_RESULTS},
                "calibration": None if calibration is None else
                [calibration.image_threshold, calibration.pixel_threshold, repr(calibration.image_scale),
                 repr(calibration.pixel_scale), calibration.colour_max]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_key(path: Path) -> dict[str, Any] | None:
    """How a file is recognised on a rerun: its full path, size and modification time (None: it cannot be read)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_file(row: dict[str, Any], key: dict[str, Any] | None) -> bool:
    return key is not None and all(row.get(name) == value for name, value in key.items())


def read_state(out: Path, fingerprint: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """(rows of files scored by an earlier run with this model, by full path; whether an earlier run's results
    were there but of another model). Rows of files that could not be read are not kept: they are tried again."""
    path = out / STATE_NAME
    if not path.is_file():
        return {}, False
    rows: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        try:
            header = json.loads(handle.readline() or "{}")
        except json.JSONDecodeError:
            return {}, True
        if header.get("model") != fingerprint:
            return {}, True
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed mid-write
                continue
            if isinstance(row, dict) and not row.get("error") and "path" in row:
                rows[row["path"]] = row
    return rows, False


def _write_state(out: Path, fingerprint: str, rows: Sequence[dict[str, Any]]) -> None:
    """The state file anew (atomically): the model's line and the rows kept from earlier runs."""
    temporary = out / f".{STATE_NAME}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"model": fingerprint}) + "\n")
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(temporary, out / STATE_NAME)


def _unique_name(stem: str, used: set[str]) -> str:
    name, counter = stem, 1
    while name in used:
        counter += 1
        name = f"{stem}_{counter}"
    used.add(name)
    return name


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the CSV shows it (numbers formatted, empty cells where a file could not be read)."""
    if row.get("error"):
        return {name: row.get(name, "") if name in ("file", "error") else "" for name in PREDICTION_FIELDS}
    return {"file": row["file"], "score": f"{row['score']:.4f}", "raw_score": f"{row['raw_score']:.6g}",
            "verdict": row["verdict"], "regions": row["regions"], "largest_region_area": row["largest_region_area"],
            "overlay": row.get("overlay", ""), "error": ""}


def score_files(model: AnomalyModel, files: Sequence[tuple[Path, str]], out: Path, batch_size: int,
                quiet: bool = True, resume: bool = True, overlays: str = "all",
                progress: Progress | None = None) -> BatchSummary:
    """Score files into `out`: predictions.csv (one row per file, input order) and a result picture per readable
    image (`overlays`: "all", "defects" or "none").

    With `resume`, files an earlier run into the same folder scored with the same model (and thresholds) are
    not scored again. `progress(done, total)` is called as files are done, skipped ones first.
    """
    if model.calibration is None:
        raise ModelFileError("the model has no calibration (thresholds): retrain it")
    if not files:
        raise ParameterError("no input images: give image files or folders holding images")
    if overlays not in OVERLAY_CHOICES:
        raise ParameterError(f"overlays must be one of {list(OVERLAY_CHOICES)}, not {overlays!r}")
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    previous, restarted = read_state(out, fingerprint) if resume else ({}, False)
    keys = [file_key(path) for path, _ in files]
    rows: list[dict[str, Any] | None] = [None] * len(files)
    for index, ((_, name), key) in enumerate(zip(files, keys)):
        row = previous.get(key["path"]) if key is not None else None
        if row is not None and _same_file(row, key):
            rows[index] = {**row, "file": name}
    kept = [row for row in rows if row is not None]
    skipped = len(kept)
    _write_state(out, fingerprint, kept)
    used = {Path(row["overlay"]).stem for row in kept if row.get("overlay")}
    chunk: list[tuple[int, Path, str, np.ndarray]] = []
    bar = tqdm(total=len(files), initial=skipped, desc="predict", unit="image", file=sys.stderr, disable=quiet)
    done = skipped
    if progress is not None:
        progress(done, len(files))

    with open(out / STATE_NAME, "a", encoding="utf-8") as state:

        def finish(index: int, row: dict[str, Any]) -> None:
            nonlocal done
            rows[index] = row
            state.write(json.dumps(row) + "\n")
            done += 1
            bar.update(1)
            if progress is not None:
                progress(done, len(files))

        def score_chunk() -> None:
            prediction = model.predict([image for *_, image in chunk])
            for position, (index, path, name, image) in enumerate(chunk):
                result = image_result(prediction, position, image, name)
                overlay = ""
                if overlays == "all" or (overlays == "defects" and result.is_defect):
                    overlay = f"{_unique_name(path.stem, used)}.png"
                    cv2.imwrite(str(out / overlay), result.overlay()[:, :, ::-1])  # BGR
                areas = [row["area (px)"] for row in result.region_rows(brief=True)]
                finish(index, {**(keys[index] or {"path": str(path)}), "file": name, "score": result.score,
                               "raw_score": result.raw_score, "verdict": "defect" if result.is_defect else "good",
                               "regions": len(result.regions), "largest_region_area": max(areas, default=0),
                               "overlay": overlay, "error": ""})
            chunk.clear()
            state.flush()  # a run stopped later keeps this chunk

        try:
            for index, (path, name) in enumerate(files):
                if rows[index] is not None:
                    continue
                try:
                    image = load_image(path, max_side=DISPLAY_MAX_SIDE)
                except ImageLoadError as error:  # one bad file is reported and skipped; the rest are scored
                    finish(index, {**(keys[index] or {"path": str(path)}), "file": name, "error": str(error)})
                    continue
                chunk.append((index, path, name, image))
                if len(chunk) == batch_size or \
                        sum(item.shape[0] * item.shape[1] for *_, item in chunk) >= _CHUNK_PIXELS:
                    score_chunk()
            if chunk:
                score_chunk()
        finally:
            bar.close()
            # Also when stopped: the CSV then holds what was scored so far (a rerun goes on from there).
            finished = [row for row in rows if row is not None]
            csv_path = write_csv(out / CSV_NAME, [csv_row(row) for row in finished], PREDICTION_FIELDS)
    failed = sum(bool(row.get("error")) for row in finished)
    return BatchSummary(scored=len(finished) - failed, flagged=sum(row.get("verdict") == "defect" for row in finished),
                        failed=failed, csv_path=csv_path, skipped=skipped, rows=tuple(finished), restarted=restarted)
