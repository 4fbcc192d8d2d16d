"""The app's models folder (list, rename, delete), background training jobs and their lock, friendly errors."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from app_testing import SMALL_PARAMS, copy_model, train_small_model
from inspection.errors import (
    DatasetError,
    ImageLoadError,
    ModelFileError,
    WeightsNotFoundError,
    friendly_error,
    is_user_error,
)
from inspection.model.modelfile import read_model_info
from inspection.progress import Progress
from inspection_app.charts import loss_figure
from inspection_app.jobs import (
    JobState,
    TrainingBusyError,
    TrainingCancelled,
    TrainingManager,
    TrainingRequest,
    folder_lock,
    run_training,
    run_training_in_process,
)
from inspection_app.library import (
    MODELS_DIR_ENV,
    delete_model,
    list_models,
    models_dir,
    rename_model,
    unique_model_path,
    validate_name,
)


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("models") / "small.safetensors")


# ------------------------------------------------------------------------------------------------ library


def test_models_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    assert models_dir() == Path("models")
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert models_dir() == tmp_path / "elsewhere"


def test_list_models_reads_headers_and_reports_broken_files(small_model: Path, tmp_path: Path) -> None:
    assert list_models(tmp_path / "missing") == ([], [])
    copy_model(small_model, tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not a model at all")
    (tmp_path / ".small.safetensors.123.tmp").write_bytes(b"temporary of an atomic write")
    entries, problems = list_models(tmp_path)
    assert [entry.name for entry in entries] == ["small"]
    entry = entries[0]
    assert (entry.method, entry.backbone, entry.category) == ("patchcore", "efficientnet_lite0", "surface")
    assert 0.5 < entry.metrics["image_auroc"] <= 1.0
    assert entry.row()["image AUROC"] == round(entry.metrics["image_auroc"], 3)
    assert entry.label == "small (patchcore/efficientnet_lite0, surface)"
    assert len(problems) == 1 and "broken.safetensors" in problems[0]


def test_rename_changes_display_name_and_file_name(small_model: Path, tmp_path: Path) -> None:
    path = copy_model(small_model, tmp_path)
    new_path = rename_model(path, "  Bottle line 3 / night shift ", tmp_path)
    assert new_path == tmp_path / "Bottle-line-3-night-shift.safetensors"
    assert not path.exists() and new_path.is_file()
    assert read_model_info(new_path)["info"]["display_name"] == "Bottle line 3 / night shift"
    other = copy_model(small_model, tmp_path, "other.safetensors")
    with pytest.raises(ValueError, match="already exists"):
        rename_model(other, "Bottle line 3 night shift", tmp_path)
    with pytest.raises(ValueError, match="must not be empty"):
        rename_model(other, "   ", tmp_path)
    with pytest.raises(ValueError, match="at most"):
        validate_name("x" * 200)


def test_delete_only_model_files_inside_the_folder(small_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    path = copy_model(small_model, folder)
    outside = copy_model(small_model, tmp_path / "elsewhere")
    with pytest.raises(ModelFileError, match="not in the models folder"):
        delete_model(outside, folder)
    notes = folder / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(ModelFileError, match="not a model file"):
        delete_model(notes, folder)
    delete_model(path, folder)
    assert not path.exists() and outside.exists() and notes.exists()
    with pytest.raises(ModelFileError, match="does not exist"):
        delete_model(path, folder)


def test_unique_model_path_never_overwrites(tmp_path: Path) -> None:
    first = unique_model_path(tmp_path, "surface patchcore")
    assert first.name == "surface-patchcore.safetensors"
    first.write_bytes(b"taken")
    assert unique_model_path(tmp_path, "surface patchcore").name == "surface-patchcore-2.safetensors"


# ------------------------------------------------------------------------------------------------ jobs


def _request(folder: Path, name: str = "job") -> TrainingRequest:
    return TrainingRequest("patchcore", {}, "unused", None, str(folder / f"{name}.safetensors"), name)


def test_manager_runs_a_job_in_the_background_and_records_progress(tmp_path: Path) -> None:
    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        for step in range(1, 4):
            progress(Progress("train", step, 3, loss=1.0 / step))
        Path(request.out_path).write_bytes(b"model")
        return Path(request.out_path), {"image_auroc": 0.9}

    manager = TrainingManager(runner)
    job_id = manager.start(_request(tmp_path))
    state = manager.wait(job_id, timeout=10)
    assert state.status == "done" and state.fraction == 1.0
    assert state.losses == [1.0, 0.5, pytest.approx(1 / 3)]
    assert state.named_losses == {}
    assert state.result_path == str(tmp_path / "job.safetensors") and state.metrics == {"image_auroc": 0.9}
    assert manager.active() is None and manager.latest().job_id == job_id


def test_a_second_training_is_refused_while_one_runs(tmp_path: Path) -> None:
    release, started = threading.Event(), threading.Event()

    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        progress(Progress("features", 1, 2))
        started.set()
        release.wait(10)
        progress(Progress("features", 2, 2))
        return Path(request.out_path), {}

    manager = TrainingManager(runner)
    first = manager.start(_request(tmp_path, "first"))
    assert started.wait(10)
    with pytest.raises(TrainingBusyError, match="already running .*'first'"):
        manager.start(_request(tmp_path, "second"))
    # Another manager (another app process) on the same folder is refused by the folder lock.
    with pytest.raises(TrainingBusyError, match="another training is running on the models folder"):
        TrainingManager(runner).start(_request(tmp_path, "third"))
    assert manager.active().job_id == first
    release.set()
    assert manager.wait(first, timeout=10).status == "done"
    assert manager.wait(manager.start(_request(tmp_path, "after")), timeout=10).status == "done"


def test_failures_become_friendly_messages_and_free_the_lock(tmp_path: Path) -> None:
    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        raise ImageLoadError("train/good/007.png: not an image file or unsupported format")

    manager = TrainingManager(runner)
    state = manager.wait(manager.start(_request(tmp_path)), timeout=10)
    assert state.status == "failed"
    assert state.error == "This image cannot be used: train/good/007.png: not an image file or unsupported format"
    with folder_lock(tmp_path):  # released: can be taken again
        pass


def test_cancel_stops_at_the_next_progress_report(tmp_path: Path) -> None:
    running = threading.Event()

    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        for step in range(10_000):
            progress(Progress("train", step, 10_000))
            running.set()
            threading.Event().wait(0.001)
        return Path(request.out_path), {}

    manager = TrainingManager(runner)
    job_id = manager.start(_request(tmp_path))
    assert running.wait(10)
    manager.cancel(job_id)
    state = manager.wait(job_id, timeout=10)
    assert state.status == "cancelled" and state.step < 9_999


def test_job_state_describes_itself() -> None:
    state = JobState("id", _request(Path("/tmp")), status="running", stage="coreset", step=5, total=20,
                     losses=[0.25])
    assert state.fraction == 0.25 and state.active
    assert state.describe().startswith("Selecting the memory bank (coreset): 5/20 · loss 0.25 · ")
    # 5 of 20 steps in 10 s: the other 15 take about 30 s more.
    timed = replace(state, stage_started=time.time() - 10)
    assert timed.stage_seconds_left == pytest.approx(30, abs=1)
    assert timed.describe().endswith("· about 30 s left in this stage")
    assert replace(timed, step=0).stage_seconds_left is None  # no rate before the first step
    assert "left" not in replace(timed, status="done").describe()
    slow = replace(timed, step=1, stage_started=time.time() - 600)  # 19 more steps of 10 min
    assert slow.describe().endswith("about 3 h 10 min left in this stage")


def test_run_training_fits_evaluates_and_saves(demo_root: Path, tmp_path: Path) -> None:
    request = TrainingRequest("patchcore", dict(SMALL_PARAMS), str(demo_root), None,
                              str(tmp_path / "trained.safetensors"), "my model")
    stages: list[str] = []
    path, metrics = run_training(request, lambda report: stages.append(report.stage))
    header = read_model_info(path)
    assert header["info"]["display_name"] == "my model" and header["info"]["category"] == "surface"
    assert metrics["n_test"] == 50 and header["info"]["metrics"]["image_auroc"] == metrics["image_auroc"]
    assert {"features", "coreset", "calibrate", "predict", "save"} <= set(stages)


def test_the_app_trains_in_a_process_of_its_own_at_lower_priority(demo_root: Path, tmp_path: Path) -> None:
    request = TrainingRequest("patchcore", dict(SMALL_PARAMS), str(demo_root), None,
                              str(tmp_path / "trained.safetensors"), "in a process")
    reports: list[Progress] = []
    path, metrics = run_training_in_process(request, reports.append)
    assert read_model_info(path)["info"]["display_name"] == "in a process" and metrics["n_test"] == 50
    assert {"features", "coreset", "calibrate", "save"} <= {report.stage for report in reports}
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # this process kept its priority


def test_stopping_a_training_process_leaves_the_saved_model_untouched(small_model: Path, demo_root: Path,
                                                                     tmp_path: Path) -> None:
    existing = copy_model(small_model, tmp_path, "kept.safetensors")
    before = existing.read_bytes()
    request = TrainingRequest("patchcore", dict(SMALL_PARAMS), str(demo_root), None, str(existing), "replacement")

    def stop_at_the_coreset(report: Progress) -> None:
        if report.stage == "coreset":
            raise TrainingCancelled()

    with pytest.raises(TrainingCancelled):
        run_training_in_process(request, stop_at_the_coreset)
    assert existing.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.safetensors"]  # no temporary left


def test_a_failure_in_the_training_process_comes_back_as_its_error(tmp_path: Path) -> None:
    request = TrainingRequest("patchcore", dict(SMALL_PARAMS), str(tmp_path / "no-data"), None,
                              str(tmp_path / "m.safetensors"), "failing")
    with pytest.raises(DatasetError, match="no-data"):
        run_training_in_process(request, lambda report: None)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("error, expected, user", [
    (ImageLoadError("x.png: empty file"), "This image cannot be used: x.png: empty file", True),
    (DatasetError("/d: dataset folder not found"), "This dataset cannot be used: /d: dataset folder not found", True),
    (ModelFileError("m.safetensors: not a model file of this tool"),
     "This model cannot be used: m.safetensors: not a model file of this tool", True),
    (WeightsNotFoundError("no resnet18 weights"), "The backbone's pretrained weights are missing: no resnet18 weights",
     True),
    (ValueError("device 'cuda' was asked for, but no CUDA GPU is available here"),
     "Invalid input: device 'cuda' was asked for, but no CUDA GPU is available here", True),
    (TrainingBusyError("a training is already running"), "a training is already running", True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "Not enough memory for this step", True),
    (KeyError("oops"), "Unexpected error (KeyError): 'oops'", False),
])
def test_friendly_error(error: BaseException, expected: str, user: bool) -> None:
    assert friendly_error(error).startswith(expected)
    assert is_user_error(error) is user


def test_a_method_with_several_losses_gets_one_curve_each(tmp_path: Path) -> None:
    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        for step in range(1, 3):
            progress(Progress("epoch", step, 2, loss=2.0 / step, losses={"generator": 2.0 / step,
                                                                         "discriminator": 0.5 * step}))
        Path(request.out_path).write_bytes(b"model")
        return Path(request.out_path), {}

    manager = TrainingManager(runner)
    state = manager.wait(manager.start(_request(tmp_path)), timeout=10)
    assert state.losses == [2.0, 1.0]
    assert state.named_losses == {"generator": [2.0, 1.0], "discriminator": [0.5, 1.0]}
    figure = loss_figure(state.named_losses)
    assert [trace.name for trace in figure.data] == ["generator", "discriminator"]
    assert list(figure.data[1].y) == [0.5, 1.0] and figure.layout.showlegend

