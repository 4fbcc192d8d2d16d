"""What the Live page runs and shows: one live pipeline per app server (a line has one camera per station), kept
beside the scripts so that it survives reruns and page switches, started from the page's form and read by its
fragment. The pipeline itself is `inspection.live`, the same as `python -m inspection run`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from inspection.errors import BusyError, ParameterError
from inspection.export.scorers import load_scorer
from inspection.live.pipeline import Pipeline, PipelineStatus
from inspection.live.spec import PipelineSpec, SinkSpec, build_pipeline
from inspection.model.base import AnomalyModel
from inspection.model.scorer import Scorer

from .teach_view import VERSION_CHARS, model_version


class LiveBusyError(BusyError):
    """A pipeline runs already; the message says which."""


@dataclass(frozen=True)
class LiveRequest:
    """The page's form: the model (its file, or an exported folder), the source, the sinks (one per line)."""

    model_path: str
    source: str
    sinks: tuple[str, ...] = ()
    every: str = "all"
    exported: str = ""  # an exported folder to score with instead of the model file (onnxruntime / OpenVINO)
    max_frames: int | None = None

    def spec(self) -> PipelineSpec:
        if not self.source.strip():
            raise ParameterError("no source given: a video file, usb:N, an rtsp:// or http(s):// URL, or a folder")
        return PipelineSpec(model=self.exported.strip() or self.model_path, source=self.source.strip(),
                            sinks=[SinkSpec(target.strip(), every=self.every) for target in self.sinks
                                   if target.strip()], max_frames=self.max_frames)


def sink_lines(text: str) -> tuple[str, ...]:
    """The sinks typed one per line (blank lines and # comments skipped)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


class LiveManager:
    """The app server's one pipeline: start (refused while one runs), stop, status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pipeline: Pipeline | None = None
        self.request: LiveRequest | None = None
        self.version = ""  # the version of the model the pipeline scores with (`scorer_version`)

    def start(self, request: LiveRequest, scorer: Scorer | None = None) -> Pipeline:
        """Build the pipeline, open its source (an unreachable one is refused here, in one line) and start it.
        `scorer`: the model already open (the page's cached model file); an exported folder is opened here."""
        with self._lock:
            if self.pipeline is not None and self.pipeline.running:
                raise LiveBusyError(f"a pipeline is running already (reading {self.pipeline.source.describe()}): "
                                    "stop it first")
            spec = request.spec()
            if request.exported.strip():
                scorer = load_scorer(Path(request.exported.strip()))
            pipeline = build_pipeline(spec, scorer=scorer)
            pipeline.open()
            pipeline.start()
            self.pipeline, self.request, self.version = pipeline, request, scorer_version(scorer)
            return pipeline

    def stop(self) -> PipelineStatus | None:
        pipeline = self.pipeline
        return None if pipeline is None else pipeline.stop()

    def status(self) -> PipelineStatus | None:
        pipeline = self.pipeline
        return None if pipeline is None else pipeline.status()


def scorer_version(scorer: Scorer | None) -> str:
    """Which version of the model a pipeline scores with: a model file's (`teach_view.model_version`), or an
    exported folder's fingerprint (that of the file it was exported from) and its runtime."""
    if scorer is None:
        return ""
    if isinstance(scorer, AnomalyModel):
        return model_version(scorer)
    return f"version {scorer.fingerprint[:VERSION_CHARS]} ({scorer.runtime})"


#: Every browser session of this server sees the same pipeline.
LIVE = LiveManager()


def sinks_table(status: PipelineStatus) -> pd.DataFrame:
    """Each sink's health as the page's table."""
    rows = [{"sink": f"{sink['kind']}: {sink['target']}", "state": "ok" if sink["healthy"] else "failing",
             "sent": sink["sent"], "waiting": sink["pending"], "left out (filter, rate)": sink["filtered"],
             "given up": sink["dropped"], "retries": sink["retries"], "last error": sink["last_error"] or ""}
            for sink in status.sinks]
    return pd.DataFrame(rows)
