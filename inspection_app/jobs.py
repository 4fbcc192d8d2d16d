"""Training in a background worker: survives the app's reruns and page switches, one at a time.

Streamlit reruns a page's script on every widget change, so a training cannot live in the script. A daemon
thread owned by a process-wide `TrainingManager` runs it — in a process of its own, at a lower priority, so
that inspecting images in the browser stays at its quiet speed while a training runs. Pages poll a `JobState`
snapshot. One training at a time: a process lock (all browser sessions share the process) plus an exclusive
lock on a file in the models folder (another server process using the same folder) refuse a second one with
`TrainingBusyError` instead of letting two trainings compete for the machine and the files.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inspection.data.protocol import AlignmentProtocol
from inspection.errors import BusyError, friendly_error
from inspection.outputs import check_output_file
from inspection.progress import Progress
from inspection.workflows.train import TrainingStopped, stage_label, train, train_in_process

try:  # POSIX only; elsewhere the process lock alone guards the models folder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE_NAME = ".training.lock"
MAX_KEPT_JOBS = 20
#: Test images a training from the app times the prediction on: fewer than the CLI's and the bench's 20 (and a
#: budget of as many seconds), so that a slow method's timing ends soon after its evaluation.
APP_TIMING_REPEATS = 5

class TrainingBusyError(BusyError):
    """A training is already running; the message says which."""


class TrainingCancelled(Exception):
    """Raised inside the worker when a user asked to stop the training."""


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a training needs: method and its parameters, the data, where to save, a display name."""

    method: str
    params: dict[str, Any]
    data_root: str
    category: str | None
    out_path: str
    display_name: str
    evaluate: bool = True
    protocol: str = "aligned"  # the evaluation protocol the images are under (data/protocol.py), seed 0
    extra_good: tuple[str, ...] = ()  # a refit's images taught as good, beside the dataset's (workflows/refit.py)
    record: dict[str, Any] = field(default_factory=dict)  # what the new model's info records of how it was made


@dataclass
class JobState:
    """A snapshot of one training: what it does now, how far it is, and how it ended."""

    job_id: str
    request: TrainingRequest
    status: str = "starting"  # starting | running | done | failed | cancelled
    stage: str = ""
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)
    #: Every named loss per report, when the method reports several (e.g. a GAN's generator and discriminator).
    named_losses: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    stage_started: float = field(default_factory=time.time)  # when the current stage began (its rate: ETA)
    finished: float | None = None
    error: str = ""
    result_path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running")

    @property
    def fraction(self) -> float:
        """Progress of the current stage in [0, 1]."""
        if self.status == "done":
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def stage_label(self) -> str:
        return stage_label(self.request.method, self.stage)

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def stage_seconds_left(self) -> float | None:
        """The current stage's remaining seconds at its rate so far (None before its first step or when done)."""
        if not self.active or not self.total or self.step <= 0 or self.step >= self.total:
            return None
        return (time.time() - self.stage_started) / self.step * (self.total - self.step)

    def describe(self) -> str:
        """One line for a progress bar, e.g. 'Training: epoch 12/60 · loss 0.41 · 95 s · about 6 min left in
        this stage'."""
        counts = f": {self.step}/{self.total}" if self.total else ""
        loss = f" · loss {self.losses[-1]:.4g}" if self.losses else ""
        left = self.stage_seconds_left
        eta = "" if left is None else f" · about {_duration(left)} left in this stage"
        return f"{self.stage_label}{counts}{loss} · {self.elapsed:.0f} s{eta}"


def _duration(seconds: float) -> str:
    """'40 s', '6 min', '1 h 05 min'."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):02d} min"


def run_training(request: TrainingRequest, progress: Callable[[Progress], None]) -> tuple[Path, dict[str, Any]]:
    """Fit the requested model on the dataset, evaluate on its test split when there is one, save it."""
    result = train(request.method, request.params, request.data_root, request.category, request.out_path,
                   evaluate_test=request.evaluate, display_name=request.display_name, progress=progress,
                   protocol=AlignmentProtocol(request.protocol), timing_repeats=APP_TIMING_REPEATS,
                   extra_good=request.extra_good, record=request.record)
    return result.path, result.metrics


def run_training_in_process(request: TrainingRequest,
                            progress: Callable[[Progress], None]) -> tuple[Path, dict[str, Any]]:
    """`run_training` in a process of its own, of lower priority (the app's default runner)."""
    return train_in_process(request.method, request.params, request.data_root, request.category, request.out_path,
                            evaluate_test=request.evaluate, display_name=request.display_name, progress=progress,
                            protocol=AlignmentProtocol(request.protocol), timing_repeats=APP_TIMING_REPEATS,
                            extra_good=request.extra_good, record=request.record)


class FolderLock:
    """An exclusive, non-blocking lock on `folder/.training.lock` (flock: shared by processes, not inherited)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._handle: Any = None

    def acquire(self) -> None:
        """Take the lock, or raise TrainingBusyError when another holder has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE_NAME, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise TrainingBusyError(f"another training is running on the models folder {self.folder} "
                                        "(maybe in another app process): wait until it has finished") from None
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (no-op when not held)."""
        if self._handle is not None:
            if fcntl is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def folder_lock(folder: str | os.PathLike) -> FolderLock:
    """The training lock of a models folder, for `with folder_lock(folder): ...`."""
    return FolderLock(folder)


class TrainingManager:
    """Runs at most one training at a time in a background thread; keeps the latest jobs' states."""

    def __init__(self, runner: Callable[[TrainingRequest, Callable[[Progress], None]],
                                        tuple[Path, dict[str, Any]]] = run_training_in_process):
        self._runner = runner
        self._lock = threading.Lock()
        self._jobs: dict[str, JobState] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._active_id: str | None = None

    def start(self, request: TrainingRequest) -> str:
        """Start a training; returns its id. Raises TrainingBusyError when one is running."""
        folder = Path(request.out_path).parent
        with self._lock:
            if self._active_id is not None:
                running = self._jobs[self._active_id]
                raise TrainingBusyError(
                    f"a training is already running ({running.request.display_name!r}, "
                    f"{running.stage_label.lower()}, {running.elapsed:.0f} s so far): wait until it has finished "
                    "or stop it, then start yours")
            # Check the destination and take the folder lock here, in the caller, so that a refusal is raised to it.
            check_output_file(request.out_path)
            lock = FolderLock(folder)
            lock.acquire()
            job_id = uuid.uuid4().hex[:12]
            for old_id in list(self._jobs)[:-(MAX_KEPT_JOBS - 1)]:  # bounded history of finished jobs
                self._jobs.pop(old_id, None)
                self._cancel.pop(old_id, None)
            self._jobs[job_id] = JobState(job_id, request)
            self._cancel[job_id] = threading.Event()
            self._active_id = job_id
        thread = threading.Thread(target=self._work, args=(job_id, lock), name=f"training-{job_id}", daemon=True)
        thread.start()
        return job_id

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _work(self, job_id: str, lock: FolderLock) -> None:
        request = self._jobs[job_id].request
        cancel = self._cancel[job_id]

        def progress(report: Progress) -> None:
            if cancel.is_set():
                raise TrainingCancelled()
            with self._lock:
                state = self._jobs[job_id]
                losses = state.losses + [float(report.loss)] if report.loss is not None else state.losses
                named = {name: [*state.named_losses.get(name, []), float(value)]
                         for name, value in (report.losses or {}).items()} or state.named_losses
                stage_started = state.stage_started if report.stage == state.stage else time.time()
                self._jobs[job_id] = replace(state, status="running", stage=report.stage, step=report.step,
                                             total=report.total, losses=losses, named_losses=named,
                                             stage_started=stage_started)

        outcome: dict[str, Any] = {"status": "failed", "error": "the training was interrupted"}
        try:
            self._update(job_id, status="running")
            path, metrics = self._runner(request, progress)
            outcome = {"status": "done", "result_path": str(path), "metrics": metrics}
        except (TrainingCancelled, TrainingStopped):
            outcome = {"status": "cancelled", "error": "stopped by a user"}
        except Exception as error:  # every failure must reach the page as a message, never kill silently
            outcome = {"status": "failed", "error": friendly_error(error)}
        finally:
            # Free the lock before the job reads as ended: whoever sees it ended may start the next one.
            lock.release()
            with self._lock:
                self._jobs[job_id] = replace(self._jobs[job_id], finished=time.time(), **outcome)
                if self._active_id == job_id:
                    self._active_id = None

    def state(self, job_id: str) -> JobState | None:
        """A snapshot of a job (None when unknown)."""
        with self._lock:
            state = self._jobs.get(job_id)
            return replace(state, losses=list(state.losses),
                           named_losses={name: list(values) for name, values in state.named_losses.items()}) \
                if state else None

    def active(self) -> JobState | None:
        """The running job's snapshot, if any."""
        with self._lock:
            active_id = self._active_id
        return self.state(active_id) if active_id else None

    def latest(self) -> JobState | None:
        """The most recently started job (running or finished)."""
        with self._lock:
            latest_id = next(reversed(self._jobs), None)
        return self.state(latest_id) if latest_id else None

    def cancel(self, job_id: str) -> None:
        """Ask a job to stop at its next progress report."""
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.05) -> JobState:
        """Block until the job has ended (for scripts and tests); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if state is None:
                raise KeyError(f"unknown training job {job_id!r}")
            if not state.active:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training job {job_id} still running after {timeout} s ({state.describe()})")
            time.sleep(poll)


#: The one manager of this process: every browser session of the app sees the same trainings.
MANAGER = TrainingManager()
