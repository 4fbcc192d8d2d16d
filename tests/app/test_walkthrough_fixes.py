"""Issue 22, an inspector's walkthrough of the app: the models' resize mode and working size in the tables and the
Compare headers, a readable training date, empty cells (not "None") for unreadable files, "Folder not found: …",
sizes written width × height on the Train page, train/good and test/good told apart in the dataset grid, and the
home page's training summary tied to the chosen model and its current threshold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app_testing import assert_clean, copy_model, run_page, train_small_model
from inspection.bench.resize_modes import resize_mode_costs
from inspection.data.datasets import open_dataset
from inspection.data.preprocess import Preprocessing
from inspection.errors import FolderNotFoundError, friendly_error
from inspection.model.modelfile import read_model_header, save_thresholds
from inspection.registry import get_method
from inspection.results.image import VERDICT_WORDS
from inspection.workflows.batch import BatchSummary
from inspection_app import batch_view, training
from inspection_app import jobs as jobs_module
from inspection_app import page as page_module
from inspection_app.browse import filter_samples, grid_caption
from inspection_app.compare_view import column_header
from inspection_app.jobs import TrainingManager, TrainingRequest
from inspection_app.library import describe_resize, list_models
from inspection_app.sources import folder_categories
from inspection_app.tables import EMPTY_CELL, MODEL_COLUMNS, metric_rows, resize_mode_cost_rows, width_by_height

DATE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")


@pytest.fixture(scope="module")
def two_models(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small PatchCore models of the demo data that differ only in their resize mode."""
    folder = tmp_path_factory.mktemp("walkthrough-models")
    cropped = train_small_model(demo_root, folder / "cropped.safetensors", name="kolektor A",
                                resize_mode="center_crop")
    aspect = train_small_model(demo_root, folder / "aspect.safetensors", name="kolektor B", resize_mode="aspect")
    return cropped, aspect


# ------------------------------------------------------------------------------ 1. resize mode, working size, date


def test_the_resize_mode_and_working_size_in_a_few_characters() -> None:
    assert describe_resize(Preprocessing("center_crop", 256, 224)) == "center_crop 256→224"
    assert describe_resize(Preprocessing("aspect", 256, 224)) == "aspect 256"
    assert describe_resize(Preprocessing("tiles", 448, 224)) == "tiles 448 (224 px)"
    assert describe_resize(Preprocessing("full", 256, 224)) == "full 224"


def test_model_rows_and_compare_headers_tell_two_models_apart_by_their_resize(two_models: tuple[Path, Path]) -> None:
    entries, _ = list_models(two_models[0].parent)
    by_name = {entry.name: entry for entry in entries}
    assert by_name["kolektor A"].resize == "center_crop 96→96" and by_name["kolektor B"].resize == "aspect 96"
    row = by_name["kolektor B"].row()
    assert row["resize"] == "aspect 96" and DATE.match(row["created"])
    assert list(row)[:2] == ["name", "created"]  # the date near the left, never scrolled off
    assert [row["resize"] for row in metric_rows(entries)] == [entry.resize for entry in entries]
    assert "aspect 96" in column_header(by_name["kolektor B"])
    assert "center_crop 96→96" in column_header(by_name["kolektor A"])


def _column_config(frame) -> dict:
    return json.loads(frame.proto.columns or "{}")


def test_train_and_compare_pages_show_the_resize_and_a_whole_date(models: Path, two_models: tuple[Path, Path]) -> None:
    for path in two_models:
        copy_model(path, models)
    train = run_page("app_pages/2_Train.py")
    assert_clean(train)
    table = next(frame for frame in train.dataframe if "resize" in frame.value.columns)
    assert set(table.value["resize"]) == {"center_crop 96→96", "aspect 96"}
    assert all(DATE.match(created) for created in table.value["created"])
    config = _column_config(table)
    assert config["created"]["width"] == MODEL_COLUMNS["created"]["width"]
    assert table.proto.placeholder == EMPTY_CELL

    compare = run_page("app_pages/5_Compare.py", compare_models=[str(models / path.name) for path in two_models])
    assert not compare.exception
    headers = " ".join(markdown.value for markdown in compare.markdown)
    assert "center_crop 96→96" in headers and "aspect 96" in headers
    metrics = next(frame for frame in compare.dataframe if "resize" in frame.value.columns)
    assert set(metrics.value["resize"]) == {"center_crop 96→96", "aspect 96"}


# ------------------------------------------------------------------------------ 2. unreadable files in Batch


def test_the_batch_table_leaves_the_cells_of_an_unreadable_file_empty(tmp_path: Path) -> None:
    summary = BatchSummary(scored=2, flagged=1, failed=1, csv_path=tmp_path / "predictions.csv", rows=(
        {"file": "a.png", "score": 0.9, "verdict": "defect", "regions": 2, "largest_region_area": 40},
        {"file": "b.png", "score": 0.1, "verdict": "good", "regions": 0, "largest_region_area": 0},
        {"file": "c.png", "error": "not an image"}))
    table = batch_view.table(summary)
    assert list(table["verdict"]) == [VERDICT_WORDS["defect"], VERDICT_WORDS["good"], "unreadable"]
    unreadable = table.iloc[-1]
    assert all(pd.isna(unreadable[column]) for column in ("score", "regions", "largest region (px)"))
    assert batch_view.EMPTY_CELL == "—"


def test_the_batch_page_shows_a_dash_for_an_unreadable_file(models: Path, two_models: tuple[Path, Path],
                                                             demo_root: Path, tmp_path: Path) -> None:
    copy_model(two_models[0], models)
    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.open(demo_root / "test" / "good" / "000.png").save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    at = run_page("app_pages/6_Batch.py", batch_folder=str(folder))
    at.button(key="batch_start").click().run()
    assert not at.exception
    frame = at.dataframe[0]
    assert frame.proto.placeholder == "—"
    broken = frame.value.set_index("file").loc["broken.png"]
    assert broken["verdict"] == "unreadable" and pd.isna(broken["score"]) and pd.isna(broken["regions"])


# ------------------------------------------------------------------------------ 3. a missing folder


def test_a_missing_folder_is_reported_as_such(tmp_path: Path) -> None:
    missing = tmp_path / "x" / "y"
    assert friendly_error(FolderNotFoundError(str(missing))) == f"Folder not found: {missing}"
    with pytest.raises(FolderNotFoundError) as raised:
        batch_view.check_folder(str(missing))
    assert friendly_error(raised.value) == f"Folder not found: {missing}"
    with pytest.raises(FolderNotFoundError) as raised:
        folder_categories(missing)
    assert friendly_error(raised.value) == f"Folder not found: {missing}"
    assert isinstance(raised.value, FileNotFoundError)


def test_the_batch_page_says_folder_not_found(models: Path, two_models: tuple[Path, Path], tmp_path: Path) -> None:
    copy_model(two_models[0], models)
    at = run_page("app_pages/6_Batch.py", batch_folder=str(tmp_path / "nowhere"))
    at.button(key="batch_start").click().run()
    assert not at.exception
    assert [error.value for error in at.error] == [f"Folder not found: {tmp_path / 'nowhere'}"]


def test_the_sidebar_says_folder_not_found(models: Path, tmp_path: Path) -> None:
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(tmp_path / "nowhere"))
    assert not at.exception
    assert at.sidebar.error[0].value == f"Folder not found: {tmp_path / 'nowhere'}"


# ------------------------------------------------------------------------------ 4. width × height on Train


def test_the_resize_mode_costs_are_written_width_by_height() -> None:
    assert width_by_height("256 × 640") == "640 × 256"
    assert width_by_height("8 tiles of 224 × 224") == "8 tiles of 224 × 224"
    # A 1250 px wide, 500 px high image: aspect mode works at 640 wide, 256 high.
    rows = resize_mode_cost_rows([cost.to_dict() for cost in
                                  resize_mode_costs(get_method("patchcore"), {}, 500, 1250, measure=False)])
    by_mode = {row["resize mode"]: row for row in rows}
    assert by_mode["aspect"]["the backbone sees (width × height)"] == "640 × 256"


def test_the_train_page_writes_sizes_width_by_height(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    assert_clean(at)
    table = next(frame for frame in at.dataframe if "resize mode" in frame.value.columns)
    assert "the backbone sees (width × height)" in table.value.columns
    assert any(re.search(r"For one \d+ × \d+ image", caption.value) for caption in at.caption)


# ------------------------------------------------------------------------------ 5. train/good vs test/good


def test_the_dataset_grid_tells_train_and_test_good_images_apart(models: Path, demo_root: Path) -> None:
    dataset = open_dataset(demo_root)
    captions = {grid_caption(sample) for sample in filter_samples(dataset, "all", "good")}
    assert any(caption.startswith("train/good · ") for caption in captions)
    assert any(caption.startswith("test/good · ") for caption in captions)
    at = run_page("app_pages/1_Dataset.py", dataset_type="good", dataset_per_page=96)
    assert_clean(at)
    shown = [caption for image in at.image for caption in image.captions]
    assert any(caption.startswith("train/good · ") for caption in shown)
    assert any(caption.startswith("test/good · ") for caption in shown)


# ------------------------------------------------------------------------------ 6. the home page's summary


def test_the_trained_summary_states_the_current_threshold(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    path = copy_model(two_models[0], tmp_path)
    header = read_model_header(path)
    good = np.array([record["score"] for record in header.info.test_scores if record["label"] == 0])
    recorded = header.info.metrics["fpr_unseen_good"]
    assert f": {recorded:.1%} flagged" in training.trained_summary(header)
    lowered = save_thresholds(path, image_threshold=float(good.min()) - 1.0)  # every good image flagged now
    summary = training.trained_summary(lowered)
    assert f"{len(good)} unseen good" in summary and ": 100.0% flagged" in summary
    assert training.current_metrics(lowered)["fpr_unseen_good"] == 1.0


def test_the_summary_shows_only_for_the_model_it_made(tmp_path: Path) -> None:
    made = str(tmp_path / "a.safetensors")
    assert training.shows_trained_summary(made, Path(made), tied=True)
    assert not training.shows_trained_summary(made, str(tmp_path / "b.safetensors"), tied=True)
    assert not training.shows_trained_summary(made, None, tied=True)
    assert training.shows_trained_summary(made, None, tied=False)  # the Train page: under its button, always
    assert not training.shows_trained_summary(None, made, tied=False)


def test_home_ties_the_training_summary_to_the_chosen_model(models: Path, two_models: tuple[Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other = copy_model(two_models[1], models, "bottle.safetensors")

    def runner(request: TrainingRequest, progress) -> tuple[Path, dict]:
        return copy_model(two_models[0], Path(request.out_path).parent, Path(request.out_path).name), {}

    manager = TrainingManager(runner)
    for module in (training, page_module, jobs_module):
        monkeypatch.setattr(module, "MANAGER", manager)
    made = models / "commutator.safetensors"
    job = manager.start(TrainingRequest("patchcore", {}, "unused", None, str(made), "commutator"))
    assert manager.wait(job, timeout=30).status == "done"

    at = run_page("app.py", job_id=job, home_origin="dataset")
    for _ in range(3):  # the monitor sees the finished job, selects its model and reruns
        at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="model").value == str(made)
    assert any("Trained **commutator**" in success.value for success in at.success)
    recorded = read_model_header(made).info.metrics["fpr_unseen_good"]
    assert any(f": {recorded:.1%} flagged" in caption.value for caption in at.caption)

    good = [record["score"] for record in read_model_header(made).info.test_scores if record["label"] == 0]
    save_thresholds(made, image_threshold=min(good) - 1.0)  # a threshold saved on the Threshold page
    at.run()
    assert any(": 100.0% flagged" in caption.value for caption in at.caption)
    assert not any(f": {recorded:.1%} flagged" in caption.value for caption in at.caption)  # not the old rate

    at.sidebar.selectbox(key="model").set_value(str(other)).run()  # another model: not its summary
    assert not at.exception
    assert not any("Trained **commutator**" in success.value for success in at.success)
    assert not any("flagged" in caption.value for caption in at.caption)
