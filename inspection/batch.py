"""Scoring files and folders: one CSV row and one result picture per image, bad files reported, memory bounded.

Used by `python -m inspection predict` and by the bench's memory measurement.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .data.images import list_images, load_image
from .errors import ImageLoadError, ModelFileError, ParameterError
from .model.base import AnomalyModel
from .outputs import write_csv
from .results import DISPLAY_MAX_SIDE, image_result

PREDICTION_FIELDS = ("file", "score", "raw_score", "verdict", "regions", "error")
# Images decoded for one forward pass at most (besides the batch size): bounds memory with large images.
_CHUNK_PIXELS = 64_000_000


@dataclass(frozen=True)
class BatchSummary:
    """How a batch went: images scored, flagged as defects, unreadable; where the CSV is."""

    scored: int
    flagged: int
    failed: int
    csv_path: Path


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, its name in the CSV): relative to the folder it was found in; the full path for a file given directly."""
    files: list[tuple[Path, str]] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            if not found:
                print(f"warning: folder {path} holds no images", file=sys.stderr)
            files.extend((file, str(file.relative_to(path))) for file in found)
        else:
            files.append((path, str(path)))
    return files


def _unique_name(stem: str, used: set[str]) -> str:
    name, counter = stem, 1
    while name in used:
        counter += 1
        name = f"{stem}_{counter}"
    used.add(name)
    return name


def score_files(model: AnomalyModel, files: Sequence[tuple[Path, str]], out: Path, batch_size: int,
                quiet: bool = True) -> BatchSummary:
    """Score files into `out`: predictions.csv (one row per file) and one result picture per readable image."""
    if model.calibration is None:
        raise ModelFileError("the model has no calibration (thresholds): retrain it")
    if not files:
        raise ParameterError("no input images: give image files or folders holding images")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    chunk: list[tuple[Path, str, np.ndarray]] = []

    def score_chunk() -> None:
        prediction = model.predict([image for _, _, image in chunk])
        for index, (path, name, image) in enumerate(chunk):
            result = image_result(prediction, index, image, name)
            cv2.imwrite(str(out / f"{_unique_name(path.stem, used)}.png"), result.overlay()[:, :, ::-1])  # BGR
            rows.append({"file": name, "score": f"{result.score:.4f}", "raw_score": f"{result.raw_score:.6g}",
                         "verdict": "defect" if result.is_defect else "good", "regions": len(result.regions),
                         "error": ""})
        chunk.clear()

    for path, name in tqdm(files, desc="predict", unit="image", file=sys.stderr, disable=quiet):
        try:
            image = load_image(path, max_side=DISPLAY_MAX_SIDE)
        except ImageLoadError as error:  # one bad file is reported and skipped; the rest are scored
            rows.append({"file": name, "score": "", "raw_score": "", "verdict": "", "regions": "",
                         "error": str(error)})
            continue
        chunk.append((path, name, image))
        if len(chunk) == batch_size or sum(item.shape[0] * item.shape[1] for *_, item in chunk) >= _CHUNK_PIXELS:
            score_chunk()
    if chunk:
        score_chunk()
    csv_path = write_csv(out / "predictions.csv", rows, PREDICTION_FIELDS)
    failed = sum(bool(row["error"]) for row in rows)
    return BatchSummary(len(rows) - failed, sum(row["verdict"] == "defect" for row in rows), failed, csv_path)
