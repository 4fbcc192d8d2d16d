"""Scoring files and folders: one CSV row and one result picture per image, bad files reported, memory bounded,
and resumable.

Used by `python -m inspection predict`, the app's Batch page and the bench's memory measurements. Images are
decoded and scored in chunks (never all maps at once), so thousands of images cost the memory of one chunk.
Each chunk's rows are appended to a state file in the output folder as soon as they are scored: a run that is
interrupted, or run again on the same folder, skips every file already scored with the same model, recognised by
its path, size and modification time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..data.images import IMAGE_EXTENSIONS, list_images, load_image_with_size
from ..data.uris import is_uri, list_uri_images, read_uri, uri_key, uri_name
from ..errors import ImageLoadError, ModelFileError, ParameterError
from ..model.scorer import Scorer
from ..outputs import write_csv
from ..results.image import DISPLAY_MAX_SIDE, image_result

CSV_NAME = "predictions.csv"
PARQUET_NAME = "predictions.parquet"
#: One JSON line per scored file (after a first line naming the model): what a rerun skips.
STATE_NAME = "predict-state.jsonl"
PREDICTION_FIELDS = ("file", "score", "raw_score", "verdict", "regions", "largest_region_area", "overlay", "error")
#: Which images get an overlay picture: every one, those judged defects, or none (the report draws its own).
OVERLAY_CHOICES = ("all", "defects", "none")
# Images decoded for one forward pass at most (besides the batch size): bounds memory with large images.
_CHUNK_PIXELS = 64_000_000

Progress = Callable[[int, int], None]  # (files done, files in all)
#: Where an image is read from: a local path, or a URI (`data.uris`).
Source = Path | str


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
    unlike: int = 0  # images unlike the training data: neither good nor defect (`model.familiarity`)

    @property
    def out(self) -> Path:
        return self.csv_path.parent


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Source, str]]:
    """(file, its name in the CSV): relative to the folder it was found in; the full path (or URI) for a file given
    directly. Inputs may be local paths or URIs (``s3://…``, ``file:///…``: `data.uris`).

    Folders that hold no image are named on stderr; when nothing at all is found, a ParameterError says so."""
    files: list[tuple[Source, str]] = []
    empty: list[str] = []
    for name in inputs:
        if is_uri(name):
            found_uris = list_uri_images(str(name))
            if found_uris is None:  # a file
                files.append((str(name), str(name)))
            elif not found_uris:
                empty.append(str(name))
            files.extend((uri, uri_name(uri)) for uri in found_uris or ())
            continue
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


def model_fingerprint(model: Scorer) -> str:
    """What makes two runs' results the same: the model (method, creation, settings, calibration) and the engine
    that scores it (an exported copy's scores differ from the torch model's in the last digits)."""
    return model.fingerprint if model.runtime == "torch" else f"{model.fingerprint}/{model.runtime}"


def file_key(source: Source) -> dict[str, Any] | None:
    """How a file is recognised on a rerun: its full path (or URI), size and modification time (None: it cannot be
    read)."""
    if is_uri(source):
        return uri_key(str(source))
    path = Path(source)
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


@dataclass(frozen=True)
class Task:
    """One file to score: its place in the input, where it is read from (a path or a URI), its name in the CSV, how
    a rerun recognises it, and the file name its overlay picture gets if one is written."""

    index: int
    source: str
    name: str
    key: dict[str, Any] | None
    overlay: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Task:
        return cls(**json.loads(text))


#: How the files are scored: (model, the tasks, output folder, batch size, overlays) → (task, row) pairs as the
#: files are done, in any order. `score_locally` here; `scale_out.RayEngine` on a Ray cluster.
Engine = Callable[[Scorer, Sequence[Task], Path, int, str], Iterable[tuple[Task, dict[str, Any]]]]


def read_source(source: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The image at a path or URI, as every scoring path reads it (shrunk to the display size), and the file's own
    (height, width)."""
    if is_uri(source):
        return load_image_with_size(read_uri(source), name=source, max_side=DISPLAY_MAX_SIDE)
    return load_image_with_size(Path(source), max_side=DISPLAY_MAX_SIDE)


def _error_row(task: Task, error: Exception) -> dict[str, Any]:
    return {**(task.key or {"path": task.source}), "file": task.name, "error": str(error)}


def _scored_rows(model: Scorer, batch: Sequence[tuple[Task, np.ndarray, tuple[int, int]]], out: Path,
                 overlays: str) -> list[tuple[Task, dict[str, Any]]]:
    """One forward pass over decoded images: each one's row (areas in the file's own pixels, also when it was decoded
    shrunk), and its overlay picture written when asked for."""
    prediction = model.predict([image for _, image, _ in batch])
    rows = []
    for position, (task, image, size) in enumerate(batch):
        result = image_result(prediction, position, image, task.name, original_size=size)
        overlay = ""
        if overlays == "all" or (overlays == "defects" and result.is_defect):
            overlay = task.overlay
            cv2.imwrite(str(out / overlay), result.overlay()[:, :, ::-1])  # BGR
        areas = [row["area (px)"] for row in result.region_rows(brief=True)]
        rows.append((task, {**(task.key or {"path": task.source}), "file": task.name, "score": result.score,
                            "raw_score": result.raw_score, "verdict": result.verdict_word,
                            "regions": len(result.regions), "largest_region_area": max(areas, default=0),
                            "overlay": overlay, "error": ""}))
    return rows


def score_tasks(model: Scorer, tasks: Sequence[Task], out: Path, overlays: str
                ) -> Iterator[tuple[Task, dict[str, Any]]]:
    """Score one chunk of files: the readable ones in forward passes of at most `_CHUNK_PIXELS` decoded pixels
    (large images then cost one pass's memory), each unreadable one — or one the model cannot judge, too small or
    too long and thin (`Preprocessing.check_inspectable`) — as a row naming why. Every engine scores its chunks
    through this, so that the same chunks give the same scores wherever they run."""
    batch: list[tuple[Task, np.ndarray, tuple[int, int]]] = []
    working: list[tuple[int, int]] = []  # each image's working size (its map's)
    for task in tasks:
        try:
            image, size = read_source(task.source)
            # Judged on the file's own size, so that the message names what the user has (not the shrunk copy).
            model.preprocessing.check_inspectable(*size, name=task.source)
        except ImageLoadError as error:  # one bad file is reported and skipped; the rest are scored
            yield task, _error_row(task, error)
            continue
        geometry = model.preprocessing.geometry(*image.shape[:2])
        if batch and _stacked_pixels([*working, (geometry.height, geometry.width)]) > _CHUNK_PIXELS:
            yield from _scored_rows(model, batch, out, overlays)
            batch, working = [], []
        batch.append((task, image, size))
        working.append((geometry.height, geometry.width))
        if sum(item.shape[0] * item.shape[1] for _, item, _ in batch) >= _CHUNK_PIXELS:
            yield from _scored_rows(model, batch, out, overlays)
            batch, working = [], []
    if batch:
        yield from _scored_rows(model, batch, out, overlays)


def _stacked_pixels(sizes: Sequence[tuple[int, int]]) -> int:
    """The map pixels one forward pass over images of these working sizes holds: a prediction stacks maps of
    different sizes into one array as large as the largest of each side (a long wide frame and a long tall one
    together would make it square: the pass is split instead)."""
    return len(sizes) * max(height for height, _ in sizes) * max(width for _, width in sizes)


def chunks(tasks: Sequence[Task], batch_size: int) -> list[Sequence[Task]]:
    """The tasks in chunks of `batch_size`, in input order: the unit of work of every engine."""
    return [tasks[start: start + batch_size] for start in range(0, len(tasks), batch_size)]


def score_locally(model: Scorer, tasks: Sequence[Task], out: Path, batch_size: int, overlays: str
                  ) -> Iterator[tuple[Task, dict[str, Any]]]:
    """The default engine: chunk after chunk, in this process, on the model's device."""
    for chunk in chunks(tasks, batch_size):
        yield from score_tasks(model, chunk, out, overlays)


def write_parquet(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """The CSV's rows as a Parquet table with typed columns (numbers as numbers, empty where a file was
    unreadable), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(name: str, kind: Any) -> Any:
        return pa.array([None if row.get("error") and name not in ("file", "error") else row.get(name, "")
                         for row in rows], type=kind)

    kinds = {"file": pa.string(), "score": pa.float64(), "raw_score": pa.float64(), "verdict": pa.string(),
             "regions": pa.int64(), "largest_region_area": pa.int64(), "overlay": pa.string(), "error": pa.string()}
    table = pa.table({name: column(name, kinds[name]) for name in PREDICTION_FIELDS})
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return path


def score_files(model: Scorer, files: Sequence[tuple[Source, str]], out: Path, batch_size: int,
                quiet: bool = True, resume: bool = True, overlays: str = "all",
                progress: Progress | None = None, engine: Engine = score_locally) -> BatchSummary:
    """Score files into `out`: predictions.csv (one row per file, input order) and a result picture per readable
    image (`overlays`: "all", "defects" or "none").

    With `resume`, files an earlier run into the same folder scored with the same model (and thresholds) are
    not scored again. `progress(done, total)` is called as files are done, skipped ones first. `engine` does the
    scoring (`score_locally` by default); this function keeps the books, whichever engine runs.
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
    keys = [file_key(source) for source, _ in files]
    rows: list[dict[str, Any] | None] = [None] * len(files)
    for index, ((_, name), key) in enumerate(zip(files, keys)):
        row = previous.get(key["path"]) if key is not None else None
        if row is not None and _same_file(row, key):
            rows[index] = {**row, "file": name}
    kept = [row for row in rows if row is not None]
    skipped = len(kept)
    _write_state(out, fingerprint, kept)
    # Overlay names are given before any scoring (unique in the folder, in input order), so that every engine
    # writes the same files wherever each image is scored.
    used = {Path(row["overlay"]).stem for row in kept if row.get("overlay")}
    tasks = [Task(index, str(source), name, keys[index], f"{_unique_name(_stem(source), used)}.png")
             for index, (source, name) in enumerate(files) if rows[index] is None]
    bar = tqdm(total=len(files), initial=skipped, desc="predict", unit="image", file=sys.stderr, disable=quiet)
    done = skipped
    if progress is not None:
        progress(done, len(files))
    try:
        with open(out / STATE_NAME, "a", encoding="utf-8") as state:
            for task, row in engine(model, tasks, out, batch_size, overlays):
                rows[task.index] = row
                state.write(json.dumps(row) + "\n")
                state.flush()  # a run stopped later keeps this file
                done += 1
                bar.update(1)
                if progress is not None:
                    progress(done, len(files))
    finally:
        bar.close()
        # Also when stopped: the CSV then holds what was scored so far (a rerun goes on from there).
        finished = [row for row in rows if row is not None]
        csv_path = write_csv(out / CSV_NAME, [csv_row(row) for row in finished], PREDICTION_FIELDS)
    failed = sum(bool(row.get("error")) for row in finished)
    return BatchSummary(scored=len(finished) - failed, flagged=sum(row.get("verdict") == "defect" for row in finished),
                        failed=failed, csv_path=csv_path, skipped=skipped, rows=tuple(finished), restarted=restarted,
                        unlike=sum(row.get("verdict") == "unlike" for row in finished))


def _stem(source: Source) -> str:
    return Path(uri_name(source) if is_uri(source) else source).stem
