"""What the Batch page computes: where a folder's results go, scoring the folder (resumable, with progress), and
the table, histogram and pictures it shows. The scoring and the report are `inspection.workflows.batch` and
`inspection.workflows.report`, the same as `python -m inspection predict --report`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from inspection.data.demo import default_demo_root
from inspection.errors import FolderNotFoundError, ParameterError
from inspection.model.base import AnomalyModel
from inspection.model.scorer import Scorer
from inspection.outputs import check_output_folder
from inspection.results.image import VERDICT_WORDS
from inspection.results.numbers import round_score, score_text
from inspection.results.pictures import THRESHOLD
from inspection.workflows.batch import BatchSummary, collect_inputs, score_files
from inspection.workflows.report import Picture, ranked, write_report

from .charts import score_histogram
from .library import ModelEntry, slugify
from .tables import EMPTY_CELL  # noqa: F401 - the page shows it in the cells an unreadable file has no value for
from .teach_view import model_version

#: The app writes overlays of the images judged defects only; the report draws the worst good ones itself.
APP_OVERLAYS = "defects"


@dataclass(frozen=True)
class BatchRun:
    """A folder scored by a model: the summary (every file's row), the report and its first pictures."""

    folder: str
    model_path: str
    model_modified: float
    summary: BatchSummary
    report_path: Path
    pictures: tuple[Picture, ...]
    version: str = ""  # the version of the model that scored it (`teach_view.model_version`)

    def is_of(self, entry: ModelEntry, folder: str) -> bool:
        """Whether this run is of this model file (version) and this folder (as typed)."""
        return self.is_for(entry, folder) and self.model_modified == entry.modified

    def is_for(self, entry: ModelEntry, folder: str) -> bool:
        """Whether this run is of this model file, in any version (taught since, say), and this folder."""
        return (self.model_path, self.folder) == (str(entry.path), folder.strip())

    def file(self, name: str) -> Path:
        """The image file of a row (its name in the table is relative to the folder)."""
        return Path(self.folder).expanduser() / name


def check_folder(text: str) -> Path:
    """The folder typed by the user; a clear error when it is empty, missing or not a folder."""
    if not text.strip():
        raise ParameterError("no folder given: type the path of a folder of images")
    folder = Path(text.strip()).expanduser()
    if not folder.exists():
        raise FolderNotFoundError(str(folder))  # "Folder not found: /the/path"
    if not folder.is_dir():
        raise ParameterError(f"{folder} is not a folder: type the path of a folder of images")
    return folder


def results_folder(folder: Path, entry: ModelEntry) -> Path:
    """Where the results of a folder and a model go: one folder per (folder, model file), under the data folder,
    so that scoring the same folder again finds them and goes on from there."""
    digest = hashlib.sha256(f"{folder.resolve()}\n{Path(entry.path).resolve()}".encode()).hexdigest()[:10]
    return default_demo_root() / "batch" / f"{slugify(folder.name or 'root')}-{digest}"


def progress_reporter(update: Callable[[float, str], Any]) -> Callable[[int, int], None]:
    """A `score_files` progress callback that calls `update(fraction, text)` (e.g. a st.progress bar's `progress`)
    when the whole percentage changes, not for every file of thousands."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if percent != shown[0]:
            shown[0] = percent
            update(done / max(total, 1), f"Scored {done} of {total} images")

    return report


def run_batch(model: AnomalyModel, entry: ModelEntry, folder_text: str, worst: int,
              progress: Callable[[int, int], None] | None = None, scorer: Scorer | None = None) -> BatchRun:
    """Score a folder with a model into its results folder (skipping what an earlier run scored there) and write
    the HTML report; errors a user can cause are InspectionErrors with one clear line. `scorer`: what scores
    instead of the model itself (its current export, on onnxruntime or OpenVINO)."""
    scorer = scorer if scorer is not None else model
    folder = check_folder(folder_text)
    files = collect_inputs([folder])
    out = check_output_folder(results_folder(folder, entry))
    batch_size = model.batch_size
    summary = score_files(scorer, files, out, batch_size, overlays=APP_OVERLAYS, progress=progress)
    if summary.scored == 0:
        raise ParameterError(f"none of the {summary.failed} file(s) in {folder} could be read as an image")
    report = write_report(scorer, summary, worst=worst, model_name=entry.name, inputs=[str(folder)],
                          batch_size=batch_size)
    return BatchRun(folder=folder_text.strip(), model_path=str(entry.path), model_modified=entry.modified,
                    summary=summary, report_path=report.path, pictures=report.pictures[:worst],
                    version=model_version(model) + ("" if scorer is model else f" · on {scorer.runtime}"))


def table(summary: BatchSummary, taught: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per file, highest score first and unreadable files last, for a sortable table (numbers stay
    numbers; missing values where a file could not be read: the page shows them as EMPTY_CELL). `taught`: what
    was taught about some files ({file: words}), in a column of its own when given."""
    rows = [{"file": row["file"], "score": round_score(row["score"]),
             "verdict": VERDICT_WORDS.get(row["verdict"], row["verdict"]),
             "regions": row["regions"], "largest region (px)": row["largest_region_area"], "error": ""}
            for row in ranked(summary.rows)]
    rows += [{"file": row["file"], "score": None, "verdict": "unreadable", "regions": None,
              "largest region (px)": None, "error": row["error"]} for row in summary.rows if row.get("error")]
    columns = ["file", "score", "verdict", "regions", "largest region (px)", "error"]
    if taught is not None:
        for row in rows:
            row["taught"] = taught.get(row["file"], "")
        columns.insert(3, "taught")
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"score": "Float64", "regions": "Int64", "largest region (px)": "Int64"})


def teachable_files(frame: pd.DataFrame) -> list[str]:
    """The table's files that can be taught: those that were read (in the table's order)."""
    return [str(name) for name, verdict in zip(frame["file"], frame["verdict"]) if verdict != "unreadable"]


def readable_files(summary: BatchSummary) -> list[str]:
    """The names of the files that were read (and scored), in the folder's order."""
    return [row["file"] for row in summary.rows if not row.get("error")]


def still_offered(chosen: Sequence[str] | None, options: Sequence[str]) -> list[str]:
    """The chosen files that are still offered (a multiselect refuses a value outside its options)."""
    return [name for name in chosen or () if name in options]


def selected_files(frame: pd.DataFrame, rows: Sequence[int]) -> list[str]:
    """The teachable files of the table's selected rows (positions in `frame`, as st.dataframe reports them)."""
    allowed = set(teachable_files(frame))
    return [str(frame["file"].iloc[row]) for row in rows if 0 <= row < len(frame) and
            str(frame["file"].iloc[row]) in allowed]


def histogram(summary: BatchSummary) -> go.Figure:
    """The folder's scores by verdict, with the threshold (0.5 on the model's scale)."""
    good = [row["score"] for row in summary.rows if row.get("verdict") == "good"]
    defect = [row["score"] for row in summary.rows if row.get("verdict") == "defect"]
    return score_histogram(good, defect, THRESHOLD, "Scores of the folder's images, by verdict")


def picture_caption(picture: Picture) -> str:
    """`file: score 0.812 · DEFECT`."""
    row = picture.row
    return f"{row['file']}: score {score_text(row['score'])} · {VERDICT_WORDS.get(row['verdict'], row['verdict'])}"
