"""The contention bench: how fast inspection stays when the CPU is shared.

Times `predict` (one preprocessed image, batch 1) on a category quiet, then while a neighbour keeps the cores
busy — a fit running again and again in another process (camera software, a second app), and a training job
started from this process the way the app starts one — and times a fit of the category quiet and beside that
neighbour. Each figure is recorded with the machine's load average and the thread settings it was measured
under. Results: ``contention.json`` and ``contention.md``.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.datasets import open_dataset
from ..device import configure_threads, thread_settings
from ..model.base import AnomalyModel
from ..model.batching import decode
from ..workflows.train import train, train_in_process

#: The longest wait for a neighbour to start computing (importing torch, reading images) before timing.
NEIGHBOUR_START_TIMEOUT = 120.0


class _Stop(Exception):
    """Ends a neighbour's current fit at its next progress report."""


def _neighbour(data: str, category: str, method: str, computing: Any, stop: Any) -> None:
    """A neighbour process: fits `method` on `category` again and again until told to stop."""
    configure_threads()

    def progress(report: Any) -> None:
        computing.set()
        if stop.is_set():
            raise _Stop()

    try:
        while not stop.is_set():
            train(method, {}, data, category, evaluate_test=False, progress=progress)
    except _Stop:
        pass


def _predict_times(model: AnomalyModel, image: torch.Tensor, repeats: int,
                   busy: Callable[[], bool] = lambda: True) -> list[float]:
    """Milliseconds per `predict_tensor` of one preprocessed image, for as long as `busy()` holds."""
    times = []
    for _ in range(repeats):
        if not busy():
            break
        started = time.perf_counter()
        model.predict_tensor(image)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _record(scenario: str, value: float, unit: str, quiet: float | None, samples: int) -> dict[str, Any]:
    return {"scenario": scenario, "value": round(value, 2), "unit": unit,
            "ratio_to_quiet": round(value / quiet, 2) if quiet else 1.0, "samples": samples, **thread_settings()}


def run_contention(data: str, category: str, out: Path, method: str = "patchcore", repeats: int = 60,
                   quiet: bool = False) -> dict[str, Any]:
    """Predict and fit timings, quiet and beside a busy neighbour; writes contention.json and contention.md."""

    def say(text: str) -> None:
        if not quiet:
            print(f"contention: {text}", file=sys.stderr, flush=True)

    configure_threads()
    out.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    scratch = Path(tempfile.mkdtemp(prefix="contention-"))
    say("quiet fit")
    fitted = train(method, {}, data, category, scratch / "model", evaluate_test=False)
    model, quiet_fit = fitted.model, fitted.model.info.fit_seconds
    image = model.preprocessing.batch([decode(open_dataset(data, category).test[0].path)])[0]
    _predict_times(model, image, 5)  # warm-up
    say("quiet predict")
    quiet_times = _predict_times(model, image, repeats)
    quiet_ms = statistics.median(quiet_times)
    rows = [_record("predict, quiet", quiet_ms, "ms", None, len(quiet_times))]

    # 1. A neighbour process fitting again and again.
    computing, stop = context.Event(), context.Event()
    neighbour = context.Process(target=_neighbour, args=(data, category, method, computing, stop), daemon=True)
    neighbour.start()
    try:
        if not computing.wait(NEIGHBOUR_START_TIMEOUT):
            raise RuntimeError("the neighbour process did not start computing")
        say("predict beside a fit in another process")
        times = _predict_times(model, image, repeats, neighbour.is_alive)
        rows.append(_record(f"predict, a {method} fit running in another process",
                            statistics.median(times), "ms", quiet_ms, len(times)))
        say("fit beside a fit in another process")
        loaded_fit = train(method, {}, data, category, evaluate_test=False).model.info.fit_seconds
        rows.append(_record(f"{method} fit, quiet", quiet_fit, "s", None, 1))
        rows.append(_record(f"{method} fit, another {method} fit running in another process", loaded_fit, "s",
                            quiet_fit, 1))
    finally:
        stop.set()
        neighbour.join(timeout=60)
        if neighbour.is_alive():
            neighbour.terminate()

    # 2. A training job started from this process, as the app starts one (a process of lower priority).
    job_computing, finished = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["result"] = train_in_process(method, {}, data, category, scratch / "job", evaluate_test=False,
                                                 progress=lambda report: job_computing.set())
        except Exception as error:  # noqa: BLE001 - reported below
            outcome["error"] = error
        finally:
            finished.set()
            job_computing.set()

    threading.Thread(target=job, daemon=True).start()
    job_computing.wait(NEIGHBOUR_START_TIMEOUT)
    say("predict beside the app's training job")
    times = _predict_times(model, image, repeats, lambda: not finished.is_set())
    rows.append(_record("predict, a training job started from this process (as the app does)",
                        statistics.median(times) if times else float("nan"), "ms", quiet_ms, len(times)))
    finished.wait()
    if "error" in outcome:
        raise outcome["error"]

    report = {"environment": {"inspection": __version__, "torch": torch.__version__, "method": method,
                              "category": category, "date": time.strftime("%Y-%m-%d")}, "rows": rows}
    (out / "contention.json").write_text(json.dumps(report, indent=2))
    (out / "contention.md").write_text(contention_table(report))
    return report


def contention_table(report: dict[str, Any]) -> str:
    """The contention figures as a Markdown table, with what they were measured under."""
    lines = ["| scenario | median | × quiet | samples | torch threads | wait policy | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['scenario']} | {row['value']:.1f} {row['unit']} | {row['ratio_to_quiet']:.2f} | "
                     f"{row['samples']} | {row['torch_threads']} | {row['omp_wait_policy'] or 'default'} | "
                     f"{row['load_average_1min']} |")
    environment = report["environment"]
    return "\n".join(lines) + (f"\n\nMeasured {environment['date']} with inspection {environment['inspection']}, "
                               f"torch {environment['torch']}: {environment['method']} on "
                               f"{environment['category']}; predict = one preprocessed image at batch 1, median."
                               "\n")
