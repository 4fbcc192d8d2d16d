"""The app's training process: it starts from the training module alone (never re-running the Streamlit page that
started it), and its slow ends report progress — the prediction's timing step by step, on fewer images than the
bench times."""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from app_testing import SMALL_PARAMS
from inspection.progress import Progress
from inspection.workflows.evaluate import TIMING_BATCH, evaluate, time_prediction
from inspection.workflows.train import DEFAULT_TIMING_REPEATS
from inspection_app import jobs
from inspection_app.jobs import APP_TIMING_REPEATS, TrainingRequest, run_training_in_process

PAGE = '''
from pathlib import Path
Path(__file__).with_suffix(".ran").write_text("the page ran")
import streamlit as st
st.write("a page")
'''


@pytest.fixture
def page_as_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`__main__` as `streamlit run` leaves it while a page runs: a module of that name whose `__file__` is the
    page script (here one that leaves a marker file beside itself when run)."""
    page = tmp_path / "page.py"
    page.write_text(PAGE)
    module = types.ModuleType("__main__")
    module.__dict__["__file__"] = str(page)
    monkeypatch.setitem(sys.modules, "__main__", module)
    return page


def test_a_training_started_from_a_page_does_not_run_the_page_again(page_as_main: Path, demo_root: Path,
                                                                   tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    request = TrainingRequest("patchcore", dict(SMALL_PARAMS), str(demo_root), None,
                              str(tmp_path / "trained.safetensors"), "from a page")
    reports: list[Progress] = []
    path, metrics = run_training_in_process(request, reports.append)
    assert path.exists() and metrics["n_test"] == 50
    assert not page_as_main.with_suffix(".ran").exists()  # the training process never ran the page
    log = capfd.readouterr().err
    assert "ScriptRunContext" not in log and "streamlit" not in log.lower()
    timing = [report for report in reports if report.stage == "timing"]
    assert len({report.step for report in timing}) > 2  # not one 0/1 for the whole timing
    assert timing[-1].step == timing[-1].total > 1


class _StubPreprocessing:
    def batch(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list]:
        return torch.zeros((len(images), 3, 8, 8)), [None] * len(images)


class _StubModel:
    preprocessing = _StubPreprocessing()

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_tensor(self, tensor: torch.Tensor) -> None:
        self.calls.append(len(tensor))


def test_timing_the_prediction_reports_each_call_in_images() -> None:
    model = _StubModel()
    reports: list[Progress] = []
    images = [np.zeros((8, 8, 3), np.uint8)] * 5
    timing = time_prediction(model, images, repeats=5, warmup=3, progress=reports.append)
    assert set(timing) == {"predict_ms_per_image", f"predict_ms_per_image_batch{TIMING_BATCH}",
                           "decode_ms_per_image"}
    steps = [report.step for report in reports]
    assert {report.stage for report in reports} == {"timing"}
    # 3 warm-up and 5 single calls, a batch's warm-up and 1 batch (a short timing: the bench's 20 time 3 batches)
    assert {report.total for report in reports} == {3 + 5 + 2 * TIMING_BATCH}
    assert steps == [*range(9), 8 + TIMING_BATCH, 8 + 2 * TIMING_BATCH]
    assert sum(model.calls) == steps[-1]  # each step is an image predicted


def test_the_app_times_fewer_images_than_the_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked: dict = {}
    monkeypatch.setattr(jobs, "train_in_process", lambda *args, **kwargs: asked.update(kwargs) or (None, {}))
    run_training_in_process(TrainingRequest("patchcore", {}, str(tmp_path), None, str(tmp_path / "m"), "m"),
                            lambda report: None)
    assert asked["timing_repeats"] == APP_TIMING_REPEATS < DEFAULT_TIMING_REPEATS
    # The CLI and the bench time as many as before, in the same budget.
    assert inspect.signature(evaluate).parameters["timing_repeats"].default == DEFAULT_TIMING_REPEATS == 20
