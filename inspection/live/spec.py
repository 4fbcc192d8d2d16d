"""A pipeline described once — in a TOML file (`inspection run PIPELINE.toml`), by flags, or by the Live page — and
built from that description: the model opened, the source and the sinks made, a folder's progress resumed.

A pipeline file::

    model = "models/bottle-patchcore.pt"   # a model file, or a folder made by `inspection export`
    runtime = "auto"                        # auto, torch, onnx, openvino
    max_frames = 1000                       # optional: stop after this many scored frames
    max_seconds = 3600                      # optional: stop after this long

    [source]
    uri = "rtsp://10.0.0.12/stream1"        # a video file, usb:N, rtsp:// or http(s):// (MJPEG), a folder
    realtime = true                         # a video file plays at its own rate, like a camera

    [[sinks]]
    target = "mqtt://127.0.0.1:1883/line3/verdicts"
    every = "defects"                       # all (default) or defects
    max_per_s = 5                           # optional rate limit

    [[sinks]]
    target = "webhook:https://mes.example/inspection"
    headers = { Authorization = "Bearer …" }
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..export.scorers import RUNTIMES, load_scorer
from ..model.scorer import Scorer
from .frames import EventLog
from .pipeline import Pipeline
from .sinks import make_sink
from .sources import FolderSource
from .sources import open_source as open_source_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EVERY = ("all", "defects")
#: The file, inside a watched folder, listing what a model has scored there (one name per line): a pipeline started
#: again on the folder goes on where it stopped, as `predict --report` does.
RESUME_FOLDER = ".inspection-live"


@dataclass
class SinkSpec:
    """One sink: `target` as KIND:TARGET (folder:DIR, csv:FILE, webhook:URL) or an mqtt:// URL."""

    target: str
    every: str = "all"
    max_per_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # a webhook's
    timeout_s: float | None = None  # a webhook's (default 5 s)

    def options(self) -> dict[str, Any]:
        """The options given for the sink's kind (a kind that takes none of them refuses them in one line)."""
        given = {"headers": self.headers or None, "timeout_s": self.timeout_s}
        return {name: value for name, value in given.items() if value is not None}

    def __post_init__(self) -> None:
        if self.every not in EVERY:
            raise ParameterError(f"sink {self.target}: every must be one of {list(EVERY)}, not {self.every!r}")
        if self.max_per_s is not None and not self.max_per_s > 0:
            raise ParameterError(f"sink {self.target}: max_per_s must be positive, not {self.max_per_s!r}")


@dataclass
class PipelineSpec:
    """What a pipeline reads, scores with and sends to."""

    model: str
    source: str
    sinks: list[SinkSpec] = field(default_factory=list)
    runtime: str = "auto"
    realtime: bool = True
    max_frames: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ParameterError(f"runtime must be one of {list(RUNTIMES)}, not {self.runtime!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ParameterError(f"max_frames must be at least 1, not {self.max_frames}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ParameterError(f"max_seconds must be positive, not {self.max_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TOP_KEYS = {"model", "runtime", "max_frames", "max_seconds", "source", "sinks"}
_SOURCE_KEYS = {"uri", "realtime"}
_SINK_KEYS = {"target", "every", "max_per_s", "headers", "timeout_s"}


def _unknown(keys: set[str], known: set[str], where: str) -> None:
    if keys - known:
        raise ParameterError(f"{where}: unknown key(s) {sorted(keys - known)}; known: {sorted(known)}")


def read_spec(path: str | Path) -> PipelineSpec:
    """A pipeline file (TOML), checked key by key; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ParameterError(f"pipeline file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ParameterError(f"{path} is not a TOML pipeline file: {error}") from None
    _unknown(set(values), _TOP_KEYS, str(path))
    source = values.get("source")
    if not isinstance(source, dict) or "uri" not in source:
        raise ParameterError(f"{path}: a [source] table with uri = \"…\" is needed")
    _unknown(set(source), _SOURCE_KEYS, f"{path} [source]")
    if "model" not in values:
        raise ParameterError(f"{path}: model = \"…\" (a model file or an exported folder) is needed")
    sinks = values.get("sinks", [])
    if not isinstance(sinks, list) or not all(isinstance(sink, dict) for sink in sinks):
        raise ParameterError(f"{path}: sinks are [[sinks]] tables")
    for sink in sinks:
        _unknown(set(sink), _SINK_KEYS, f"{path} [[sinks]]")
        if "target" not in sink:
            raise ParameterError(f"{path}: each [[sinks]] needs target = \"KIND:TARGET\"")

    def local(text: str) -> str:
        """A relative path is read from the pipeline file's folder; URLs and usb:N stay as they are."""
        return text if ":" in text or Path(text).is_absolute() else str(path.parent / text)

    return PipelineSpec(
        model=local(str(values["model"])), source=local(str(source["uri"])),
        sinks=[SinkSpec(**{**sink, "target": _local_sink(sink["target"], local)}) for sink in sinks],
        runtime=values.get("runtime", "auto"), realtime=bool(source.get("realtime", True)),
        max_frames=values.get("max_frames"), max_seconds=values.get("max_seconds"))


def _local_sink(target: str, local: Any) -> str:
    kind, _, rest = target.partition(":")
    return f"{kind}:{local(rest)}" if kind in ("folder", "csv") and rest else target


class ResumeLog:
    """The names a model has scored in a watched folder, appended as they are scored (a restart skips them)."""

    def __init__(self, folder: Path, fingerprint: str):
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.path = folder / RESUME_FOLDER / f"scored-{digest}.txt"
        self.done: set[str] = set()
        if self.path.is_file():
            self.done = {line for line in self.path.read_text().splitlines() if line}

    def add(self, name: str) -> None:
        self.path.parent.mkdir(exist_ok=True)
        with self.path.open("a") as file:
            file.write(name + "\n")
        self.done.add(name)


def build_pipeline(spec: PipelineSpec, *, scorer: Scorer | None = None, log: EventLog | None = None,
                   device: str | None = None, open_source: bool = False) -> Pipeline:
    """The pipeline a spec describes: the source and the sinks made (each refused in one line when malformed), the
    model opened (or `scorer`, already open). With `open_source`, a camera or a stream is connected before the model
    is loaded, so that a wrong address is said within the source's timeout; else `run()` or `start()` connects."""
    from ..results.image import DISPLAY_MAX_SIDE

    sinks = [make_sink(sink.target, every=sink.every, max_per_s=sink.max_per_s, log=log, **sink.options())
             for sink in spec.sinks]
    resume: ResumeLog | None = None
    if "://" not in spec.source and Path(spec.source).is_dir():
        # A watched folder goes on where this model stopped: which model it is decides what was done.
        scorer = scorer or load_scorer(spec.model, spec.runtime, device=device)
        resume = ResumeLog(Path(spec.source), scorer.fingerprint)
    source = open_source_of(spec.source, log=log, realtime=spec.realtime, max_side=DISPLAY_MAX_SIDE,
                            skip=resume.done if resume else ())
    if open_source:
        source.open()
    scorer = scorer or load_scorer(spec.model, spec.runtime, device=device)
    pipeline = Pipeline(source, scorer, sinks, model_id=Path(spec.model).name, max_frames=spec.max_frames,
                        max_seconds=spec.max_seconds, log=log, source_opened=open_source)
    if resume is not None and isinstance(source, FolderSource):
        pipeline.on_scored.append(lambda scored: resume.add(scored.frame.name))
    return pipeline
