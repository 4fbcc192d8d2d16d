"""The live loop: a source's frames scored one at a time, each scored frame offered to every sink.

Back-pressure: a live source (a camera, a stream, a video played at its rate) hands its frames over through one slot
that holds only the newest frame — when the model is slower than the source, the frame waiting in the slot is
replaced and counted as dropped, so nothing piles up and what is scored is always the latest picture. A folder
waits on disk: its reader waits for the slot to be free, and nothing is dropped. Sinks queue (bounded) and send on
their own threads, so a slow broker or webhook never slows the scoring.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import friendly_error, is_user_error
from ..model.scorer import Scorer
from ..results.image import image_result
from ..results.record import inspection_record
from .frames import EventLog, Frame, ScoredFrame, Sink, Source

#: Scored frames kept for the Live page's chart (the report's latency percentiles use up to LATENCY_WINDOW).
HISTORY = 600
LATENCY_WINDOW = 10_000
#: Event lines kept (the page shows the last few; the command line prints each as it comes).
EVENTS = 200


class _NewestSlot:
    """One frame handed from the source's thread to the scoring thread. `put(…, drop=True)` replaces a frame that
    is still waiting (returned, to be counted as dropped); `put(…, drop=False)` waits until the slot is free."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ended = False
        self._changed = threading.Condition()

    def put(self, frame: Frame, drop: bool, stop: threading.Event) -> Frame | None:
        with self._changed:
            if not drop:
                while self._frame is not None and not stop.is_set():
                    self._changed.wait(0.1)
            replaced, self._frame = self._frame, frame
            self._changed.notify_all()
            return replaced

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def take(self, stop: threading.Event, deadline: float | None = None) -> Frame | None:
        """The waiting frame; None once the source has ended and the slot is empty, when `stop` is set, or at
        `deadline` (time.perf_counter())."""
        with self._changed:
            while self._frame is None and not self._ended and not stop.is_set():
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                self._changed.wait(0.1)
            frame, self._frame = self._frame, None
            self._changed.notify_all()
            return frame


@dataclass
class PipelineStatus:
    """What the pipeline has done so far: counts, rates, latency, the recent scores, the newest scored frame."""

    running: bool
    source: str
    received: int
    scored: int
    dropped: int
    failed: int
    sent: int
    elapsed_s: float
    frames_per_s: float  # scored frames per second since the first frame arrived
    latency_ms: dict[str, float]  # p50, p99, max over the last LATENCY_WINDOW frames, from source to verdict
    defects: int
    sinks: list[dict[str, Any]]
    recent: list[dict[str, Any]]  # the last HISTORY frames: index, time, score, verdict (the control chart)
    events: list[str]
    latest: ScoredFrame | None = None
    error: str | None = None  # why it stopped, when it stopped on an error
    threshold: float = 0.5
    reconnects: int = 0

    def summary(self) -> str:
        """One line of counts for the command line."""
        latency = (f", latency p50 {self.latency_ms['p50']:.0f} ms, p99 {self.latency_ms['p99']:.0f} ms"
                   if self.scored else "")
        return (f"{self.received} received, {self.scored} scored ({self.defects} not good), {self.dropped} dropped "
                f"(model busy), {self.failed} failed, {self.sent} sent; {self.frames_per_s:.1f} frames/s{latency}")

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-able values (without the newest frame's pixels)."""
        values = {name: value for name, value in self.__dict__.items() if name != "latest"}
        values["latest"] = None if self.latest is None else self.latest.record
        return values


@dataclass
class _Counts:
    received: int = 0
    scored: int = 0
    dropped: int = 0
    failed: int = 0
    defects: int = 0
    first: float | None = None
    last: float | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    recent: deque = field(default_factory=lambda: deque(maxlen=HISTORY))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


class Pipeline:
    """One source → one model → sinks. `run()` scores until the source ends, `max_frames` frames are scored,
    `max_seconds` pass or `stop()` is called; `start()` does the same on a thread of its own (the Live page) and
    `status()` says how it goes."""

    def __init__(self, source: Source, scorer: Scorer, sinks: Sequence[Sink] = (), *, model_id: str | None = None,
                 max_frames: int | None = None, max_seconds: float | None = None, log: EventLog | None = None,
                 source_opened: bool = False):
        if scorer.calibration is None:
            raise ValueError("the model has no calibration (thresholds): retrain it")
        self.source = source
        self.scorer = scorer
        self.sinks = list(sinks)
        self.model_id = model_id or scorer.info.display_name or scorer.name
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self._outside_log = log
        self._events: deque[str] = deque(maxlen=EVENTS)
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._latest: ScoredFrame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._running = False
        self._started_at: float | None = None
        self._opened = source_opened
        #: Called with each scored frame after the sinks were offered it (a watched folder's resume log).
        self.on_scored: list[Callable[[ScoredFrame], None]] = []
        # The source logs its reconnects and gaps through the pipeline, so they show with its counts.
        self.source.log = self.log
        if source_opened:
            self.log(f"reading {self.source.describe()}")

    # --- events and status ------------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {message}"
        self._events.append(line)
        if self._outside_log is not None:
            self._outside_log(message)

    def status(self) -> PipelineStatus:
        with self._lock:
            counts = self._counts
            latencies = np.asarray(counts.latencies, dtype=float)
            recent = list(counts.recent)
            elapsed = 0.0 if counts.first is None else (counts.last or counts.first) - counts.first
            latest = self._latest
            values = (counts.received, counts.scored, counts.dropped, counts.failed, counts.defects)
        received, scored, dropped, failed, defects = values
        sinks = [sink.health().as_dict() for sink in self.sinks]
        latency = ({"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                    "max": float(latencies.max())} if latencies.size else {"p50": 0.0, "p99": 0.0, "max": 0.0})
        # Frames per second over the frames scored after the first: the first frame's wait is not a rate.
        rate = (scored - 1) / elapsed if scored > 1 and elapsed > 0 else 0.0
        return PipelineStatus(
            running=self._running, source=self.source.describe(), received=received, scored=scored, dropped=dropped,
            failed=failed, sent=sum(sink["sent"] for sink in sinks), elapsed_s=round(elapsed, 3),
            frames_per_s=rate, latency_ms=latency, defects=defects, sinks=sinks, recent=recent,
            events=list(self._events), latest=latest, error=self._error,
            threshold=float(self.scorer.calibration.normalized_image_threshold),
            reconnects=int(getattr(self.source, "reconnects", 0)))

    # --- running ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run on a thread of its own; `status()` reports, `stop()` ends it."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this pipeline is running already")
        self._thread = threading.Thread(target=self._run_quietly, name="inspection-pipeline", daemon=True)
        self._running = True
        self._thread.start()

    def _run_quietly(self) -> None:
        try:
            self.run()
        except Exception as error:  # noqa: BLE001 - kept for the page, which shows it as one line
            self._error = friendly_error(error) if is_user_error(error) else f"{type(error).__name__}: {error}"
            self.log(f"stopped: {self._error}")

    def stop(self, timeout: float = 10.0) -> PipelineStatus:
        """Stop reading, finish the frame being scored, flush the sinks (within `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    @property
    def running(self) -> bool:
        return self._running

    def open(self) -> None:
        """Connect to the source: SourceError, one line, within its timeout when it cannot be reached."""
        if not self._opened:
            self.source.open()
            self._opened = True
            self.log(f"reading {self.source.describe()}")

    def run(self) -> PipelineStatus:
        """Open the source (unless `open()` did), then score until the end."""
        self._running = True
        try:
            self.open()
            self._started_at = time.perf_counter()
            slot = _NewestSlot()
            reader = threading.Thread(target=self._read, args=(slot,), name="inspection-source", daemon=True)
            reader.start()
            try:
                self._score_frames(slot)
            finally:
                self._stop.set()
                reader.join(5.0)
                self.source.close()
                for sink in self.sinks:
                    sink.close()
            status = self.status()
            self.log(f"ended: {status.summary()}")
            return status
        finally:
            self._running = False

    def _read(self, slot: _NewestSlot) -> None:
        """The source's thread: each frame into the slot (live: replacing a waiting one, which is dropped)."""
        try:
            for frame in self.source.frames(self._stop):
                with self._lock:
                    self._counts.received += 1
                replaced = slot.put(frame, drop=self.source.live, stop=self._stop)
                if replaced is not None:
                    with self._lock:
                        self._counts.dropped += 1
                if self._stop.is_set():
                    break
        except Exception as error:  # noqa: BLE001 - a source that fails for good ends the run with one line
            self._error = friendly_error(error) if is_user_error(error) else f"{type(error).__name__}: {error}"
            self.log(f"the source failed: {self._error}")
        finally:
            slot.end()

    def _score_frames(self, slot: _NewestSlot) -> None:
        deadline = None if self.max_seconds is None else (self._started_at or time.perf_counter()) + self.max_seconds
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                self.log(f"stopping: {self.max_seconds:g} s reached")
                return
            frame = slot.take(self._stop, deadline)
            if frame is None:
                if deadline is not None and time.perf_counter() >= deadline:
                    continue  # said above, on the next turn
                return
            scored = self._score(frame)
            if scored is None:
                continue
            for sink in self.sinks:
                sink.offer(scored)
            for hook in self.on_scored:
                hook(scored)
            if self.max_frames is not None and self._counts.scored >= self.max_frames:
                self.log(f"stopping: {self.max_frames} frame(s) scored")
                return

    def _score(self, frame: Frame) -> ScoredFrame | None:
        """One frame's record (the service's schema, with where the frame came from); None when it cannot be
        judged (logged, counted as failed)."""
        try:
            self.scorer.preprocessing.check_inspectable(*frame.original_size, name=frame.name)
            started = time.perf_counter()
            prediction = self.scorer.predict([frame.image])
            result = image_result(prediction, 0, frame.image, frame.name, original_size=frame.original_size)
            done = time.perf_counter()
            timings = {"decode": frame.decode_ms, "score": (done - started) * 1000,
                       "total": (done - frame.received) * 1000}
            record = dict(inspection_record(result, self.scorer, timings, self.model_id, file=frame.name))
        except Exception as error:  # noqa: BLE001 - one frame that cannot be judged never stops the line
            if not is_user_error(error):
                raise
            with self._lock:
                self._counts.failed += 1
            self.log(f"{frame.name}: not scored: {friendly_error(error)}")
            return None
        record["live"] = {"source": self.source.describe(), "index": frame.index,
                          "captured_at": _iso(frame.timestamp)}
        scored = ScoredFrame(frame, record, result)
        with self._lock:
            counts = self._counts
            counts.scored += 1
            counts.defects += scored.is_defect
            counts.first = frame.received if counts.first is None else counts.first
            counts.last = done
            counts.latencies.append(timings["total"])
            counts.recent.append({"index": frame.index, "time": frame.timestamp, "score": record["score"],
                                  "verdict": record["verdict"], "name": frame.name})
            self._latest = scored
        return scored
