"""Training end to end, written once for the CLI, the app and the bench: open the dataset, build the model,
fit and calibrate it, evaluate it on the test split, save one file — here, or in a process of its own at a
lower priority (`train_in_process`), so that inspection beside it keeps its speed."""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from ..data.datasets import Dataset, Sample, open_dataset
from ..data.protocol import AlignmentProtocol
from ..device import configure_threads
from ..errors import friendly_error
from ..model.base import AnomalyModel
from ..model.batching import split_holdout
from ..model.modelfile import MODEL_SUFFIX
from ..outputs import check_output_file
from ..progress import Progress, ProgressCallback, no_progress
from ..registry import create_model, get_method
from .evaluate import Evaluation, evaluate, record_evaluation

#: Stages every training reports after the method's own (the method's labels come from its class).
COMMON_STAGE_LABELS = {
    "train": "Training",
    "epoch": "Training",
    "calibrate": "Calibrating thresholds on held-out good images",
    "predict": "Evaluating on the test split",
    "timing": "Timing the prediction",
    "save": "Saving the model file",
}


#: Without a test split: the share of good images held out for verification, at least this many, and only when
#: there are enough good images for fitting, calibration and verification.
VERIFICATION_FRACTION, VERIFICATION_MINIMUM, VERIFICATION_MIN_IMAGES = 0.1, 10, 40
VERIFICATION_SOURCE = "verification share of the good training images (no test split)"

#: How many images an evaluation times the prediction on (`evaluate`'s default: the CLI's and the bench's).
DEFAULT_TIMING_REPEATS = 20


def stage_label(method: str, stage: str) -> str:
    """A readable name of a progress stage of `method`'s training, e.g. 'Selecting the memory bank (coreset)'."""
    try:
        labels = {**COMMON_STAGE_LABELS, **get_method(method).capabilities.stages}
    except ValueError:
        labels = COMMON_STAGE_LABELS
    return labels.get(stage, stage.replace("_", " ").capitalize() or "Starting the training process")


def model_path(out: str | os.PathLike) -> Path:
    """Where `fit --out` writes: the path as given, with the model suffix added when it has none."""
    out = Path(out).expanduser()
    return out if out.suffix == MODEL_SUFFIX else out.with_name(out.name + MODEL_SUFFIX)


def verification_split(dataset: Dataset, seed: int) -> tuple[Dataset, bool]:
    """A dataset without a test split → (one whose test split is a seeded share of its good training images, kept
    from fitting and calibration alike, True); others, or too few good images, come back as they are (False).

    Without it nothing would say how the thresholds do on good images that neither fitting nor calibration saw."""
    if dataset.test or len(dataset.train) < VERIFICATION_MIN_IMAGES:
        return dataset, False
    # Another seed than the calibration share's, which is drawn from what is left.
    keep, held = split_holdout(len(dataset.train), VERIFICATION_FRACTION, VERIFICATION_MINIMUM, seed + 1)
    return replace(dataset, train=[dataset.train[index] for index in keep],
                   test=[dataset.train[index] for index in held]), True


def fit_on_dataset(model: AnomalyModel, dataset: Dataset, progress: ProgressCallback | None = None,
                   evaluate_test: bool = True, timing_repeats: int = DEFAULT_TIMING_REPEATS) -> Evaluation | None:
    """Fit on the train split (good images), then evaluate on the test split when there is one (both under the
    dataset's protocol, which the model records). Without a test split, a verification share of the good images
    is held out and the thresholds are measured on it (`verification_split`). The prediction is timed on
    `timing_repeats` test images (0: not timed)."""
    verifying = False
    if evaluate_test:
        dataset, verifying = verification_split(dataset, model.seed)
    model.fit([sample.source for sample in dataset.train], progress=progress)
    model.info.update(category=dataset.category, data_path=str(dataset.root), layout=dataset.layout,
                      protocol=dataset.protocol.to_dict())
    if not (evaluate_test and dataset.test):
        return None
    evaluation = evaluate(model, dataset, progress=progress, timing_repeats=timing_repeats)
    if verifying:
        evaluation.metrics["unseen_good_source"] = VERIFICATION_SOURCE
    record_evaluation(model, dataset, evaluation)
    return evaluation


@dataclass
class TrainingResult:
    """A trained model, its evaluation on the test split (None when skipped) and the file written (if any)."""

    model: AnomalyModel
    evaluation: Evaluation | None
    path: Path | None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.evaluation.metrics) if self.evaluation is not None else {}


def train(method: str, params: dict[str, Any], data: str | os.PathLike, category: str | None = None,
          out: str | os.PathLike | None = None, *, evaluate_test: bool = True, display_name: str = "",
          progress: ProgressCallback | None = None, protocol: AlignmentProtocol | None = None,
          timing_repeats: int = DEFAULT_TIMING_REPEATS, extra_good: Sequence[str] = (),
          record: dict[str, Any] | None = None) -> TrainingResult:
    """Fit `method` with `params` on a dataset's good images (and the files `extra_good`: a refit's images taught as
    good), evaluate it, and save it to `out` (when given), with `record` in its info; under `protocol` (default:
    aligned) the train and test images are moved by it."""
    progress = progress or no_progress
    model = create_model(method, **params)  # settings and the destination are checked before any data is read
    if out is not None:
        check_output_file(model_path(out))
    dataset = open_dataset(data, category)
    if extra_good:
        dataset.train = [*dataset.train, *(Sample(Path(image), 0, "good", None, "train") for image in extra_good)]
    if protocol is not None:
        dataset = dataset.with_protocol(protocol)
    evaluation = fit_on_dataset(model, dataset, progress=progress, evaluate_test=evaluate_test,
                                timing_repeats=timing_repeats)
    if display_name:
        model.info.display_name = display_name
    model.info.extra.update(record or {})
    path = None
    if out is not None:
        progress(Progress("save", 0, 1))
        path = model.save(model_path(out))
        progress(Progress("save", 1, 1))
    return TrainingResult(model, evaluation, path)


# How much lower a background training's priority is (Unix nice): when both are busy, inspection gets the
# cores first, and the training runs at full speed whenever nothing else does.
TRAINING_NICENESS = 10
_STOP_GRACE_SECONDS = 30.0


class TrainingStopped(Exception):
    """A training in a process of its own stopped before saving anything."""


class _StopRequested(Exception):
    """Raised inside the training process at its next progress report once it was asked to stop."""


def _train_process(arguments: dict[str, Any], messages: Any, stop: Any, niceness: int) -> None:
    """A training process: runs `train`, sends its progress and then its outcome through `messages`."""
    try:
        os.nice(niceness)
    except OSError:  # not permitted here: train at the same priority
        pass
    configure_threads()

    def progress(report: Progress) -> None:
        if stop.is_set():
            raise _StopRequested()
        messages.put(("progress", report))

    try:
        result = train(**arguments, progress=progress)
        messages.put(("done", (result.path, result.metrics)))
    except _StopRequested:
        messages.put(("stopped", None))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the caller as it was raised
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 - an error that cannot cross processes goes as its text
            error = RuntimeError(friendly_error(error))
        messages.put(("error", error))


class _PipeMessages:
    """The training process's end of its message pipe: each message one pickle, sent at once."""

    def __init__(self, stream: BinaryIO):
        self._stream, self._lock = stream, threading.Lock()

    def put(self, message: tuple[str, Any]) -> None:
        with self._lock:
            pickle.dump(message, self._stream, protocol=pickle.HIGHEST_PROTOCOL)
            self._stream.flush()


def serve_training_process() -> None:
    """The main of a training process (`python -m inspection.workflows.train_job NICENESS`): reads `train`'s
    arguments, a pickle, from stdin, and sends pickled messages to stdout — what the training itself prints goes to
    stderr. Anything more on stdin, or its end (the app stopped or exited), asks the training to stop."""
    messages = _PipeMessages(os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints of libraries must not corrupt the messages
    arguments = pickle.load(sys.stdin.buffer)
    stop = threading.Event()

    def watch_stdin() -> None:
        try:
            sys.stdin.buffer.read(1)
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, name="stop-watch", daemon=True).start()
    _train_process(arguments, messages, stop, int(sys.argv[1]) if len(sys.argv) > 1 else TRAINING_NICENESS)


def _read_messages(stream: BinaryIO, inbox: queue.Queue) -> None:
    """In the caller: each message of a training process into `inbox`, then ("ended", None) at the pipe's end."""
    try:
        while True:
            inbox.put(pickle.load(stream))
    except (EOFError, OSError, pickle.UnpicklingError):
        pass
    finally:
        inbox.put(("ended", None))


def _start_training_process(arguments: dict[str, Any], niceness: int) -> subprocess.Popen:
    """A fresh Python running `serve_training_process`, with this process's import path.

    Not multiprocessing's spawn: it re-runs the parent's `__main__` file in the child, and under `streamlit run`
    that is the page script, which ran the whole page in the new process (seconds of imports, warnings of a
    Streamlit without its runtime in the log) before the training began."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the same `inspection` as this process's
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    worker = subprocess.Popen([sys.executable, "-m", "inspection.workflows.train_job", str(niceness)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert worker.stdin is not None
    pickle.dump(arguments, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
    worker.stdin.flush()
    return worker


def _end_training_process(worker: subprocess.Popen, grace: float = _STOP_GRACE_SECONDS) -> None:
    """Ask a training process to stop (a no-op when it has finished), then wait for it; ended by force when it
    overruns `grace` seconds."""
    try:
        if worker.stdin is not None:
            worker.stdin.close()
    except OSError:  # it has ended already
        pass
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=5)
    if worker.stdout is not None:
        worker.stdout.close()


def _exit_code(worker: subprocess.Popen) -> int | None:
    """A process's exit code once it has ended (None when it has not within a few seconds)."""
    try:
        return worker.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def train_in_process(method: str, params: dict[str, Any], data: str | os.PathLike, category: str | None = None,
                     out: str | os.PathLike | None = None, *, evaluate_test: bool = True, display_name: str = "",
                     progress: ProgressCallback | None = None, protocol: AlignmentProtocol | None = None,
                     niceness: int = TRAINING_NICENESS,
                     timing_repeats: int = DEFAULT_TIMING_REPEATS, extra_good: Sequence[str] = (),
                     record: dict[str, Any] | None = None) -> tuple[Path | None, dict[str, Any]]:
    """`train` in a new process of lower priority; returns (file written, test metrics).

    `progress` is called here with the process's reports. When it raises (e.g. a user stopped the training),
    the process is told to stop at its next report — before saving, or the save's atomic rename leaves the
    previous file whole — and the exception goes on.
    """
    progress = progress or no_progress
    arguments = {"method": method, "params": dict(params), "data": str(data), "category": category,
                 "out": None if out is None else str(out), "evaluate_test": evaluate_test,
                 "display_name": display_name, "protocol": protocol, "timing_repeats": timing_repeats,
                 "extra_good": [str(image) for image in extra_good], "record": dict(record or {})}
    worker = _start_training_process(arguments, niceness)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_read_messages, args=(worker.stdout, inbox), name="training-messages",
                     daemon=True).start()
    finished = False
    try:
        while True:
            kind, payload = inbox.get()
            if kind == "progress":
                progress(payload)
            elif kind == "done":
                finished = True
                path, metrics = payload
                return (None if path is None else Path(path)), metrics
            elif kind == "stopped":
                raise TrainingStopped("the training was stopped before it saved anything")
            elif kind == "ended":
                raise RuntimeError(f"the training process ended unexpectedly (exit code {_exit_code(worker)})")
            else:
                raise payload
    finally:
        if finished:  # the file is written: the process's exit (a second or so) need not hold the caller
            threading.Thread(target=_end_training_process, args=(worker,), name="training-exit",
                             daemon=True).start()
        else:
            _end_training_process(worker)
