"""Every page of the app through streamlit.testing.v1.AppTest: it renders, its widgets are there, and moving them
changes what is shown (the expected outcome, not merely the absence of a traceback)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_testing import SMALL_PARAMS, assert_clean, copy_model, demo_image, incoming_folder, run_page, train_small_model
from inspection.model.modelfile import read_model_info, update_header
from inspection.progress import Progress
from inspection.registry import backbones, get_method
from inspection_app import caches, training
from inspection_app import page as page_module
from inspection_app.jobs import MANAGER, TrainingManager, TrainingRequest, folder_lock
from inspection_app.library import list_models, models_dir, unique_model_path


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "small.safetensors")


@pytest.fixture(scope="module")
def small_padim(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "padim.safetensors", "small padim",
                             method="padim", n_features=50)


@pytest.fixture
def small_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-click default training, at low resolution so that the test stays fast."""

    def request(dataset=None) -> TrainingRequest:
        params = {**get_method("patchcore").param_set().defaults(), **SMALL_PARAMS}
        root = str(dataset.root) if dataset is not None else caches.cached_demo_root()
        name = f"{dataset.category if dataset is not None else 'surface'} patchcore (default)"
        return TrainingRequest("patchcore", params, root, None, str(unique_model_path(models_dir(), name)), name)

    monkeypatch.setattr(training, "default_training_request", request)


def png(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/png")


def wait_for_training() -> None:
    latest = MANAGER.latest()
    assert latest is not None
    state = MANAGER.wait(latest.job_id, timeout=300)
    assert state.status == "done", state.error


# -------------------------------------------------------------------------------------------------- home


def test_home_without_a_model_trains_the_default_in_one_click(models: Path, small_default: None) -> None:
    at = run_page("app.py")
    assert_clean(at)
    assert "No trained model yet" in at.info[0].value
    at.button(key="train_default").click().run()
    wait_for_training()
    at.run()
    assert_clean(at)
    entries, _ = list_models(models)
    assert [entry.name for entry in entries] == ["surface patchcore (default)"]
    assert at.sidebar.selectbox(key="model").value == str(entries[0].path)
    assert any("Trained **surface patchcore (default)**" in success.value for success in at.success)


def test_home_upload_shows_score_verdict_and_regions(models: Path, small_model: Path, demo_root: Path) -> None:
    copy_model(small_model, models)
    at = run_page("app.py")
    assert_clean(at)
    at.file_uploader(key="home_upload").set_value([png(demo_image(demo_root, "good")),
                                                   png(demo_image(demo_root, "hole"))]).run()
    assert_clean(at)
    metrics = {metric.label: [] for metric in at.metric}
    for metric in at.metric:
        metrics[metric.label].append(metric.value)
    good_score, defect_score = (float(value) for value in metrics["Anomaly score"])
    assert defect_score > good_score
    assert metrics["Verdict"] == ["GOOD", "DEFECT"]
    assert len(at.dataframe) == 2  # the defect's regions, then the summary
    assert at.dataframe[-1].value["verdict"].tolist() == ["GOOD", "DEFECT"]


def test_home_refuses_bad_uploads_with_friendly_messages(models: Path, small_model: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    copy_model(small_model, models)
    monkeypatch.setenv("INSPECTION_MAX_UPLOAD_MB", "1")
    at = run_page("app.py")
    at.file_uploader(key="home_upload").set_value([("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"),
                                                   ("notes.jpg", b"hello", "image/jpeg"),
                                                   ("huge.png", b"0" * (3 * 1024 * 1024 // 2), "image/png")]).run()
    assert not at.exception
    messages = [error.value for error in at.error]
    assert messages[0].startswith("This image cannot be used: broken.png")
    assert messages[1] == "This image cannot be used: notes.jpg: not an image file or unsupported format"
    assert messages[2] == "This image cannot be used: huge.png: 1.5 MB is above the upload limit of 1 MB"
    assert not at.metric


def test_home_first_upload_with_the_demo_open_asks_before_training(models: Path, small_default: None,
                                                                    demo_root: Path) -> None:
    at = run_page("app.py")
    at.file_uploader(key="home_upload").set_value([png(demo_image(demo_root, "hole"))]).run()
    assert not at.exception and MANAGER.active() is None  # nothing trains without a word
    assert "knows nothing of your parts" in at.warning[0].value
    at.button(key="train_demo_anyway").click().run()
    assert any("Training a first model" in info.value for info in at.info)
    wait_for_training()
    at.run()
    at.run()  # the monitor saw the finished job and selected the new model
    assert_clean(at)
    assert [metric.value for metric in at.metric if metric.label == "Verdict"] == ["DEFECT"]


def test_home_first_upload_with_a_local_dataset_open_trains_on_it(models: Path, small_default: None,
                                                                   demo_root: Path, tmp_path: Path) -> None:
    own = Path(shutil.copytree(demo_root, tmp_path / "line3" / "panels"))
    at = run_page("app.py", source_kind="folder", source_path=str(own))
    at.file_uploader(key="home_upload").set_value([png(demo_image(demo_root, "hole"))]).run()
    assert not at.exception
    assert any("Training a first model" in info.value for info in at.info)
    wait_for_training()
    entries, _ = list_models(models)
    assert [(entry.name, entry.category, entry.data_path) for entry in entries] == [
        ("panels patchcore (default)", "panels", str(own))]


def test_a_model_of_another_category_says_so_on_an_upload(models: Path, small_model: Path, demo_root: Path,
                                                          tmp_path: Path) -> None:
    copy_model(small_model, models)  # trained on "surface"
    other = Path(shutil.copytree(demo_root, tmp_path / "other" / "tiles"))
    at = run_page("app.py", source_kind="folder", source_path=str(other))
    at.file_uploader(key="home_upload").set_value([png(demo_image(demo_root, "hole"))]).run()
    assert not at.exception
    assert any("trained on 'surface' images; these come from 'tiles'" in warning.value for warning in at.warning)


def test_home_pick_from_the_dataset(models: Path, small_model: Path) -> None:
    copy_model(small_model, models)
    at = run_page("app.py", home_origin="dataset", home_sample="test/hole/000.png")
    assert_clean(at)
    assert at.selectbox(key="home_sample").value == "test/hole/000.png"
    assert [metric.value for metric in at.metric if metric.label == "Verdict"] == ["DEFECT"]


# ------------------------------------------------------------------------------------------------ dataset


def test_dataset_page_counts_filters_pages_and_enlarges(models: Path) -> None:
    at = run_page("app_pages/1_Dataset.py")
    assert_clean(at)
    counts = at.dataframe[0].value
    assert counts["images"].sum() == 110 and set(counts["type"]) == {"good", "hole", "scratch", "stain"}
    assert len(at.image) == 24  # one page of thumbnails, not all 110
    at.selectbox(key="dataset_split").set_value("test").run()
    at.selectbox(key="dataset_type").set_value("hole").run()
    assert len(at.image) == 10
    at.button(key=f"enlarge-{demo_image(Path(at.session_state['dataset_root']), 'hole')}").click().run()
    assert_clean(at)
    assert len(at.image) == 11  # the enlarged image above the grid
    assert at.toggle(key="dataset_show_mask").value is True
    details = dict(zip(at.dataframe[1].value["property"], at.dataframe[1].value["value"]))
    assert details["size"] == "256 × 256" and details["ground-truth mask"] == "yes"
    at.button(key="dataset_close").click().run()
    assert len(at.image) == 10
    at.selectbox(key="dataset_type").set_value("all").run()
    at.selectbox(key="dataset_per_page").set_value(12).run()
    assert len(at.image) == 12
    page = at.number_input(key="dataset_page-test-all-12")
    assert page.max == 5
    page.set_value(5).run()
    assert len(at.image) == 2


def test_dataset_page_with_a_bad_folder_is_a_message(models: Path, tmp_path: Path) -> None:
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(tmp_path / "nowhere"))
    assert not at.exception
    assert at.sidebar.error[0].value == f"Folder not found: {tmp_path / 'nowhere'}"
    assert "Choose a dataset" in at.info[0].value


# -------------------------------------------------------------------------------------------------- train


def test_train_form_is_built_from_the_declarations(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    assert_clean(at)
    keys = {widget.key for widget in at.main.get("number_input") + at.main.get("selectbox") +
            at.main.get("text_input") + at.main.get("checkbox")}
    for name in get_method("patchcore").param_set().names():
        assert f"param-patchcore-{name}" in keys
    at.selectbox(key="train_method").set_value("padim").run()
    assert_clean(at)
    assert at.number_input(key="param-padim-n_features").value == 100


def test_train_page_shows_what_each_resize_mode_costs_on_the_open_dataset(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    assert_clean(at)
    assert any(expander.label == "What each resize mode costs on this dataset" for expander in at.expander)
    table = at.dataframe[1].value.set_index("resize mode")
    assert list(table.index) == ["center_crop", "full", "aspect", "tiles"]  # PatchCore offers all four
    assert table.loc["center_crop", "image inspected"] != "100%" and table.loc["aspect", "image inspected"] == "100%"
    assert (table["ms / image"] == "—").all()
    at.toggle(key="mode_cost_timed").set_value(True).run()
    assert_clean(at)
    assert all(float(value) > 0 for value in at.dataframe[1].value["ms / image"])
    at.selectbox(key="train_method").set_value("padim").run()  # one grid of positions: two modes only
    assert list(at.dataframe[1].value["resize mode"]) == ["center_crop", "full"]


def test_train_page_shows_what_each_backbone_costs(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    assert_clean(at)
    table = at.dataframe[0].value.set_index("backbone")
    assert set(table.index) == set(backbones())
    # The MobileNet paper's figures for MobileNet V1 (α = 1, 224): 4.2 M parameters, 569 M mult-adds.
    assert table.loc["mobilenet_v1", "parameters (M)"] == pytest.approx(4.2, abs=0.1)
    assert table.loc["mobilenet_v1", "mult-adds (M)"] == pytest.approx(569, abs=1)
    assert (table["ms / image"] == "—").all()
    at.select_slider(key="cost_side").set_value(128).run()
    at.toggle(key="cost_timed").set_value(True).run()
    assert_clean(at)
    smaller = at.dataframe[0].value.set_index("backbone")
    assert smaller.loc["mobilenet_v1", "mult-adds (M)"] == pytest.approx(569 * (128 / 224) ** 2, rel=0.05)
    assert all(float(value) > 0 for value in smaller["ms / image"])
    # Methods without a pretrained backbone have nothing to show.
    at.selectbox(key="train_method").set_value("vae").run()
    assert_clean(at)
    assert not any(expander.label == "What each backbone costs" for expander in at.expander)


def _submit(at: AppTest) -> AppTest:
    return next(button for button in at.button if button.label == "Train").click().run()


def test_train_page_trains_evaluates_saves_and_lists(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    at.text_input(key="name-patchcore").set_value("line 3")
    at.number_input(key="param-patchcore-resize").set_value(96)
    at.number_input(key="param-patchcore-crop").set_value(96)
    at.selectbox(key="protocol-patchcore").set_value("rotated")  # parts placed by hand
    _submit(at)
    assert not at.exception
    wait_for_training()
    at.run()
    at.run()
    assert_clean(at)
    header = read_model_info(models / "line-3.safetensors")
    assert header["params"]["crop"] == 96 and header["info"]["metrics"]["n_test"] == 50
    assert header["info"]["protocol"]["name"] == "rotated" and header["info"]["metrics"]["protocol"]["seed"] == 0
    listed = at.dataframe[-1].value
    assert listed["name"].tolist() == ["line 3"] and listed["protocol"].tolist() == ["rotated"]


def test_train_page_refuses_a_second_training_clearly(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    with folder_lock(models):  # a training of another app process holds the models folder
        _submit(at)
    assert not at.exception
    assert "another training is running" in at.error[0].value
    assert not list(models.glob("*.safetensors"))


def test_train_page_refuses_invalid_settings(models: Path) -> None:
    at = run_page("app_pages/2_Train.py")
    at.number_input(key="param-patchcore-neighbourhood").set_value(4)
    _submit(at)
    assert not at.exception
    assert "'neighbourhood' must be odd" in at.error[0].value
    at.number_input(key="param-patchcore-neighbourhood").set_value(3)
    at.text_input(key="name-patchcore").set_value("   ")
    _submit(at)
    assert "must not be empty" in at.error[0].value


def test_train_page_renames_and_deletes(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app_pages/2_Train.py")
    at.text_input(key="manage_new_name").set_value("renamed model")
    at.button(key="manage_rename").click().run()
    assert_clean(at)
    assert not path.exists() and (models / "renamed-model.safetensors").is_file()
    assert at.dataframe[-1].value["name"].tolist() == ["renamed model"]
    assert at.button(key="manage_delete").disabled
    at.checkbox(key="manage_confirm-0").check().run()
    at.button(key="manage_delete").click().run()
    assert_clean(at)
    assert not list(models.glob("*.safetensors"))


def test_the_delete_confirmation_is_unticked_after_a_delete(models: Path, small_model: Path) -> None:
    first = copy_model(small_model, models, "first.safetensors")
    second = copy_model(small_model, models, "second.safetensors")
    at = run_page("app_pages/2_Train.py")
    at.selectbox(key="manage_model").set_value(str(first)).run()
    at.checkbox(key="manage_confirm-0").check().run()
    at.button(key="manage_delete").click().run()
    assert_clean(at)
    assert not first.exists() and second.exists()
    confirmations = [box for box in at.checkbox if box.key.startswith("manage_confirm")]
    assert [box.value for box in confirmations] == [False]  # armed again only by a new tick
    assert at.button(key="manage_delete").disabled and second.exists()


def test_train_is_disabled_while_a_training_runs(models: Path, small_model: Path, demo_root: Path) -> None:
    release = threading.Event()

    def slow(request: TrainingRequest, progress) -> tuple[Path, dict]:
        progress(Progress("features", 1, 2))
        release.wait(60)
        return Path(request.out_path), {}

    manager = TrainingManager(slow)
    job = manager.start(TrainingRequest("patchcore", {}, str(demo_root), None, str(models / "slow.safetensors"),
                                        "slow"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for module in (training, page_module):
                patch.setattr(module, "MANAGER", manager)
            train = run_page("app_pages/2_Train.py")
            assert train.button(key="FormSubmitter:train-form-patchcore-Train").disabled
            home = run_page("app.py")
            assert not home.exception
    finally:
        release.set()
        manager.wait(job, timeout=30)
    assert not run_page("app_pages/2_Train.py").button(key="FormSubmitter:train-form-patchcore-Train").disabled


# ---------------------------------------------------------------------------------------------- threshold


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def _widen(at: AppTest) -> AppTest:
    next(toggle for toggle in at.toggle if toggle.key.startswith("widen-")).set_value(True)
    return at.run()


def test_threshold_slider_changes_the_rates_and_saves(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    assert len(at.get("plotly_chart")) == 2  # histogram and ROC
    before = _metrics(at)
    assert set(before) == {"FPR (test)", "TPR (test)", "Precision (test)", "Promised FPR (new good)"}
    assert any("was set by the split-conformal rule for a 5.0% target" in caption.value for caption in at.caption)
    assert at.slider[0].value == pytest.approx(0.5, abs=1e-3)
    zoomed = (at.slider[0].min, at.slider[0].max)
    slider = _widen(at).slider[0]
    assert slider.min <= zoomed[0] and slider.max >= zoomed[1]
    slider.set_value(slider.min).run()
    after = _metrics(at)
    assert after["FPR (test)"] == "100.0%" and after["TPR (test)"] == "100.0%"
    assert after["FPR (test)"] != before["FPR (test)"]
    exact = next(widget for widget in at.number_input if widget.label == "Exact threshold")
    assert exact.value == pytest.approx(slider.min)  # the exact number follows the slider
    assert at.dataframe[0].value["predicted defect"].tolist() == [30, 20]
    old = read_model_info(path)["calibration"]
    at.button(key="save_threshold").click().run()
    assert_clean(at)
    calibration = read_model_info(path)["calibration"]
    expected = old["image_scale"]["offset"] + slider.min * old["image_scale"]["scale"]
    assert calibration["image_threshold"] == pytest.approx(expected, rel=1e-6)
    # The scale moved with it: the saved threshold is 0.5 again, on this page and every other.
    new_scale = calibration["image_scale"]
    assert (calibration["image_threshold"] - new_scale["offset"]) / new_scale["scale"] == pytest.approx(0.5)
    assert at.slider[0].value == pytest.approx(0.5, abs=1e-3)
    # The file and the page say it was set by hand, and what it keeps: every held-out good image scores above it.
    n_held_out = len(calibration["heldout_scores"])
    assert calibration["image_rule"] == "manual" and calibration["image_fpr"] == 1.0
    assert calibration["image_promise"].startswith("set by hand; false alarms on new good parts at most 100.0%")
    words = next(caption.value for caption in at.caption if "set by hand" in caption.value)
    assert words == ("The saved image threshold was set by hand. It promises at most 100.0% false alarms on new "
                     f"good parts, on average (split-conformal, from the {n_held_out} good images held out from "
                     f"fitting; {n_held_out} of them score above it).")
    assert not any("target" in caption.value for caption in at.caption if "saved image threshold" in caption.value)
    target = next(widget for widget in at.number_input if widget.label.startswith("Target FPR")).value
    assert target == 0.9999  # the promise at the saved threshold, within the field's range


def test_threshold_exact_number_and_target_fpr_move_the_slider(models: Path, small_model: Path) -> None:
    copy_model(small_model, models)
    at = run_page("app_pages/3_Threshold.py")
    before = at.slider[0].value
    fpr_input = next(widget for widget in at.number_input if widget.label.startswith("Target FPR"))
    fpr_input.set_value(0.5).run()
    assert_clean(at)
    assert at.slider[0].value < before
    assert float(_metrics(at)["Promised FPR (new good)"].rstrip("%")) <= 50.0
    exact = next(widget for widget in at.number_input if widget.label == "Exact threshold")
    exact.set_value(0.75).run()
    assert at.slider[0].value == pytest.approx(min(0.75, at.slider[0].max))
    # Moving the threshold puts the FPR it promises on new good parts into the target field.
    target = next(widget for widget in at.number_input if widget.label.startswith("Target FPR")).value
    assert f"{target:.1%}" == _metrics(at)["Promised FPR (new good)"]


def test_threshold_shows_the_promise_and_recalibrates_on_a_folder_with_undo(models: Path, small_model: Path,
                                                                           demo_root: Path, tmp_path: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    assert any("Measured on the 20 good test images" in caption.value for caption in at.caption)
    # A folder of good parts under brighter light: the thresholds are set again from them, and undone.
    brighter = tmp_path / "brighter"
    brighter.mkdir()
    for source in sorted((demo_root / "train" / "good").glob("*.png"))[:12]:
        pixels = np.asarray(Image.open(source).convert("RGB"), dtype=np.int16)
        Image.fromarray(np.clip(pixels + 60, 0, 255).astype(np.uint8)).save(brighter / source.name)
    before = read_model_info(path)["calibration"]
    folder_box = next(box for box in at.text_input if box.label == "Folder of new good images")
    folder_box.set_value(str(tmp_path / "missing")).run()
    at.button(key="recalibrate").click().run()
    assert not at.exception and any("folder not found" in error.value for error in at.error)
    next(box for box in at.text_input if box.label == "Folder of new good images").set_value(str(brighter)).run()
    at.button(key="recalibrate").click().run()
    assert not at.exception
    after = read_model_info(path)["calibration"]
    assert after["image_threshold"] > before["image_threshold"] and len(after["history"]) == 1
    assert any("recalibrated on 12 new good images" in caption.value for caption in at.caption)
    at.button(key="undo_recalibration").click().run()
    assert_clean(at)
    assert read_model_info(path)["calibration"] == before


def test_threshold_lists_false_alarms_and_misses_linking_to_inspect(models: Path, small_model: Path) -> None:
    copy_model(small_model, models)
    at = _widen(run_page("app_pages/3_Threshold.py"))
    at.slider[0].set_value(at.slider[0].min).run()  # everything flagged: every good test image is a false alarm
    assert_clean(at)
    assert any("20 false alarm(s), 0 miss(es)" in header.value for header in at.subheader)
    inspect_buttons = [button for button in at.button if button.key.startswith("inspect-")]
    assert len(inspect_buttons) == 6  # the first six, as thumbnails
    inspect_buttons[0].click().run()
    assert at.session_state["_kept_inspect_type"] == "good" and at.session_state["_kept_inspect_split"] == "test"


def test_threshold_pixel_level(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app_pages/3_Threshold.py", threshold_level="pixel")
    assert_clean(at)
    before = _metrics(at)
    at.slider[0].set_value(max(at.slider[0].value * 0.5, at.slider[0].min)).run()
    assert_clean(at)
    after = _metrics(at)
    assert float(after["FPR (test)"].rstrip("%")) > float(before["FPR (test)"].rstrip("%"))
    assert float(after["TPR (test)"].rstrip("%")) > float(before["TPR (test)"].rstrip("%"))
    # The model file records pixel counts, so pixel precision is known; a lower threshold flags more good pixels.
    assert 0 < float(after["Precision (test)"].rstrip("%")) < float(before["Precision (test)"].rstrip("%"))
    confusion = at.dataframe[0].value
    assert confusion["predicted defect"].sum() + confusion["predicted good"].sum() > 1000  # pixel counts
    rule = "saved pixel threshold was set by its rule: at most 0.1 false defect regions"
    assert any(rule in caption.value for caption in at.caption)
    at.button(key="save_threshold").click().run()
    assert_clean(at)
    calibration = read_model_info(path)["calibration"]
    assert calibration["pixel_rule"] == "manual" and calibration["false_regions"] is None
    assert calibration["image_rule"] == "conformal"  # the other level is untouched
    assert any(caption.value.startswith("The saved pixel threshold was set by hand: ") for caption in at.caption)


def test_threshold_page_of_a_model_without_test_evaluation(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)

    def not_evaluated(header: dict) -> dict:
        for key in ("test_scores", "pixel_quantiles", "metrics"):
            header["info"].pop(key, None)
        return header

    update_header(path, not_evaluated)
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    assert "was not evaluated on a test split" in at.warning[0].value
    assert _metrics(at)["FPR (test)"] == "—"
    at = _widen(at)
    at.slider[0].set_value(at.slider[0].min).run()
    assert_clean(at)
    assert _metrics(at)["Promised FPR (new good)"] == "100.0%"


def test_threshold_page_without_a_model(models: Path) -> None:
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    assert "No trained model yet" in at.info[0].value


# ------------------------------------------------------------------------------------------------ inspect


def test_inspect_shows_views_side_by_side_and_the_mask_follows_the_slider(models: Path, small_model: Path) -> None:
    copy_model(small_model, models)
    at = run_page("app_pages/4_Inspect.py")
    assert_clean(at)
    assert at.selectbox(key="inspect_file").value == "good/000.png"
    assert at.slider[0].value == pytest.approx(0.5)
    at.selectbox(key="inspect_type").set_value("hole").run()
    assert at.slider[0].value == pytest.approx(0.5)  # another image keeps the threshold
    assert at.selectbox(key="inspect_file").value == "hole/000.png"
    metrics = _metrics(at)
    assert metrics["Verdict"] == "DEFECT" and int(metrics["Defect regions"]) >= 1
    assert len(at.image) == 4  # original, heatmap, mask, ground truth
    assert any("No reconstruction" in caption.value and "does not reconstruct" in caption.value
               for caption in at.caption)
    assert _metrics(at)["Mask vs ground truth"].startswith("IoU")
    area_before = float(metrics["Defect area"].rstrip("%"))
    at.slider[0].set_value(0.1).run()
    assert float(_metrics(at)["Defect area"].rstrip("%")) > area_before
    assert len(at.dataframe[0].value) == int(_metrics(at)["Defect regions"])
    assert at.slider[0].max > 1.0  # the slider reaches this image's highest score
    at.selectbox(key="inspect_file").set_value("hole/001.png").run()
    assert at.slider[0].value == pytest.approx(0.1)  # the next image keeps the chosen threshold


def test_the_same_image_reads_the_same_score_on_home_inspect_and_in_its_region_labels(models: Path,
                                                                                      small_model: Path) -> None:
    copy_model(small_model, models)
    home = run_page("app.py", home_origin="dataset", home_sample="test/hole/000.png")
    inspect = run_page("app_pages/4_Inspect.py", inspect_type="hole")
    assert_clean(home)
    assert_clean(inspect)
    home_score = [metric.value for metric in home.metric if metric.label == "Anomaly score"]
    assert home_score == [_metrics(inspect)["Anomaly score"]]
    assert len(home_score[0].split(".")[1]) == 3
    # The regions table and the Grad-CAM targets ("Explain the score") round a region's peak score alike.
    inspect.toggle(key="inspect_explain").set_value(True).run()
    assert_clean(inspect)
    peaks = [f"{value:.3f}" for value in inspect.dataframe[0].value["max score"]]
    targets = [option for option in inspect.selectbox(key="inspect_explain_target").options
               if option.startswith("region")]
    assert peaks and len(targets) == len(peaks)
    assert all(target.endswith(f"(max {peak})") for peak, target in zip(peaks, targets))


def test_inspect_draws_a_methods_panels(models: Path, demo_root: Path, tmp_path: Path) -> None:
    vae = train_small_model(demo_root, tmp_path / "vae.safetensors", "small vae", method="vae", resize=32, crop=32,
                            epochs=2, hidden_dim=32, latent_dim=8, width=8, projection_steps=5, strip_frames=3)
    copy_model(vae, models)
    at = run_page("app_pages/4_Inspect.py")
    assert_clean(at)
    assert [header.value for header in at.subheader][0] == "What vae (projection) sees"
    # original, heatmap, mask, ground truth; then the panels: input, f(x), x_T, the strip of x_t
    assert len(at.image) == 4 + 4
    assert not any("No reconstruction" in caption.value for caption in at.caption)


def test_inspect_an_upload(models: Path, small_model: Path, demo_root: Path) -> None:
    copy_model(small_model, models)
    at = run_page("app_pages/4_Inspect.py", inspect_origin="upload")
    at.file_uploader(key="inspect_upload").set_value(png(demo_image(demo_root, "good"))).run()
    assert_clean(at)
    assert _metrics(at)["Verdict"] == "GOOD"
    assert len(at.image) == 3  # no ground truth for an upload


def test_a_model_of_other_backbone_weights_is_a_friendly_message(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)

    def other_weights(header: dict) -> dict:
        header["backbone"]["weights"]["fingerprint"] = "sha256:0000"
        return header

    update_header(path, other_weights)
    at = run_page("app_pages/4_Inspect.py")
    assert not at.exception
    assert at.error[0].value.startswith("This model cannot be used")
    assert "other efficientnet_lite0 weights" in at.error[0].value


# ------------------------------------------------------------------------------------------------ compare


def test_compare_grid_and_metrics(models: Path, small_model: Path, small_padim: Path) -> None:
    copy_model(small_model, models)
    copy_model(small_padim, models)
    at = run_page("app_pages/5_Compare.py")
    assert_clean(at)
    assert len(at.multiselect(key="compare_models").value) == 2
    assert len(at.multiselect(key="compare_samples").value) == 4
    assert len(at.image) == 4 * 3  # per image: the original and one heatmap per model
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["small", "small padim"]
    assert {"image AUROC", "pixel AUROC", "AUPRO", "ms / image"} <= set(table.columns)
    at.button(key="compare_measure").click().run()
    assert_clean(at)
    measured = at.dataframe[1].value
    assert sorted(measured["name"]) == ["small", "small padim"] and (measured["test images"] == 50).all()


# ------------------------------------------------------------------------------------------- data sources


def test_a_typed_local_folder_of_categories_or_plain_layout(models: Path, demo_root: Path, tmp_path: Path) -> None:
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(demo_root.parent))
    assert_clean(at)
    assert at.sidebar.selectbox(key="source_category").options == ["surface"]
    assert "**Category:** surface" in at.markdown[0].value
    plain = tmp_path / "my_parts"
    for folder in ("good", "defect", "masks"):
        (plain / folder).mkdir(parents=True)
    for index in range(10):
        copy_model(demo_image(demo_root, "good", index), plain / "good")
    for index in range(3):
        copy_model(demo_image(demo_root, "hole", index), plain / "defect", f"hole_{index}.png")
        copy_model(demo_root / "ground_truth" / "hole" / f"{index:03d}_mask.png", plain / "masks",
                   f"hole_{index}_mask.png")
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(plain))
    assert_clean(at)
    assert "**Layout:** folder" in at.markdown[0].value
    counts = at.dataframe[0].value
    assert counts["images"].tolist() == [8, 3, 2]  # train good; test: defect, good (a seeded 20 %)
    (tmp_path / "empty").mkdir()
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(tmp_path / "empty"))
    assert not at.exception
    assert "neither a dataset" in at.sidebar.error[0].value


def test_a_dataset_chosen_from_the_data_folder(models: Path) -> None:
    at = run_page("app_pages/1_Dataset.py", source_kind="folder")
    assert not at.exception
    found = at.sidebar.selectbox(key="source_found")
    assert found.options[1].endswith("surface")
    found.select_index(1).run()
    assert_clean(at)
    assert at.dataframe[0].value["images"].sum() == 110


def test_download_a_category_from_the_sidebar(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app_testing import category_archive, http_server

    data_dir = tmp_path / "data"
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(data_dir))
    served = tmp_path / "served"
    served.mkdir()
    (served / "bottle.tar.xz").write_bytes(category_archive("bottle"))
    with http_server(served) as url:
        at = run_page("app_pages/1_Dataset.py", source_kind="download", download_category="bottle",
                      download_url=f"{url}/{{category}}.tar.xz")
        assert not at.exception and not at.sidebar.error
        assert "Not downloaded yet" in at.sidebar.caption[-1].value
        at.sidebar.button(key="download_button").click().run()
    assert_clean(at)
    assert (data_dir / "mvtec_ad" / "bottle" / "train" / "good").is_dir()
    assert "**Category:** bottle" in at.markdown[0].value
    assert at.dataframe[0].value["images"].sum() == 5


def test_download_offline_is_a_clear_message(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(tmp_path / "data"))
    at = run_page("app_pages/1_Dataset.py", source_kind="download", download_category="wood",
                  download_url="http://127.0.0.1:9/{category}.tar.xz")
    at.sidebar.button(key="download_button").click().run()
    assert not at.exception
    assert "Is this machine offline?" in at.sidebar.error[0].value
    assert not any((tmp_path / "data" / "mvtec_ad").iterdir())


def test_thousands_of_images_load_only_one_page(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2
    import numpy as np

    import inspection_app.browse

    big = tmp_path / "big"
    (big / "good").mkdir(parents=True)
    tile = np.full((8, 8, 3), 128, np.uint8)
    for index in range(3000):
        cv2.imwrite(str(big / "good" / f"{index:05d}.png"), tile)
    loaded: list[str] = []
    original = inspection_app.browse.load_image
    monkeypatch.setattr(inspection_app.browse, "load_image",
                        lambda path, **kw: loaded.append(path) or original(path, **kw))
    at = run_page("app_pages/1_Dataset.py", source_kind="folder", source_path=str(big))
    assert_clean(at)
    assert at.dataframe[0].value["images"].sum() == 3000
    assert len(at.image) == 24 and len(loaded) == 24


# ----------------------------------------------------------------------------------------- caching, devices


def test_moving_a_slider_never_recomputes_a_forward_pass(models: Path, small_model: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from inspection.model.base import AnomalyModel

    calls: list[int] = []
    original = AnomalyModel.predict
    monkeypatch.setattr(AnomalyModel, "predict", lambda self, images, *args, **kw: calls.append(len(images)) or
                        original(self, images, *args, **kw))
    copy_model(small_model, models)
    at = run_page("app_pages/4_Inspect.py", inspect_type="stain")
    assert calls == [1]
    for value in (0.2, 0.9, 1.4):
        at.slider[0].set_value(value).run()
    assert_clean(at)
    assert calls == [1]


def test_asking_for_a_gpu_without_one_is_a_message(models: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    at = run_page("app_pages/2_Train.py")
    at.selectbox(key="param-patchcore-device").set_value("cuda")
    _submit(at)
    assert not at.exception
    assert "no CUDA GPU is available here" in at.error[0].value
    assert "cpu" in at.sidebar.caption[0].value


# ------------------------------------------------------------------------------------------- damaged models


def _damaged_models(folder: Path, good: Path) -> list[str]:
    """Beside a good model: a header whose info is a list, an unknown backbone, a NaN threshold, a pickle."""
    names = []
    for name, change in [("info-list", lambda header: {**header, "info": [1, 2]}),
                         ("evil-backbone", lambda header: {**header, "backbone": "evil"}),
                         ("unknown-backbone", lambda header: {**header, "backbone": {**header["backbone"],
                                                                                     "name": "evil"}}),
                         ("nan-threshold", lambda header: {**header, "calibration": {
                             **header["calibration"], "image_threshold": float("nan")}})]:
        update_header(copy_model(good, folder, f"{name}.safetensors"), change)
        names.append(f"{name}.safetensors")
    (folder / "pickle.safetensors").write_bytes(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.")
    return names + ["pickle.safetensors"]


def test_pages_stay_usable_with_damaged_model_files(models: Path, small_model: Path, demo_root: Path) -> None:
    good = copy_model(small_model, models)
    damaged = _damaged_models(models, good)
    home = run_page("app.py", home_origin="dataset")
    assert not home.exception
    assert home.selectbox(key="model").value == str(good)  # the default pick is never an unusable file
    assert len(home.sidebar.warning) == len(damaged)
    assert any("info-list.safetensors: unusable" in warning.value for warning in home.sidebar.warning)
    assert home.metric[1].value in ("GOOD", "DEFECT")  # the good model still scores the picked image
    train = run_page("app_pages/2_Train.py")
    assert not train.exception
    listed = train.dataframe[-1].value
    assert sorted(listed["file"]) == sorted(damaged)
    assert all(reason for reason in listed["reason"])
    train.selectbox(key="manage_unusable").set_value(str(models / "pickle.safetensors"))
    train.checkbox(key="manage_unusable_confirm-0").check().run()
    train.button(key="manage_unusable_delete").click().run()
    assert not (models / "pickle.safetensors").exists() and good.exists()
    compare = run_page("app_pages/5_Compare.py")
    assert not compare.exception and compare.multiselect(key="compare_models").value == [str(good)]


def test_train_page_exports_a_model_for_the_line(models: Path, small_model: Path, demo_root: Path) -> None:
    """"Export for the line": the chosen model exported beside it (checked against it), zipped for download; the
    export scores as the model does; once the model file changes, the page asks for a new export."""
    pytest.importorskip("onnxruntime")  # the export extra, which CI installs
    import zipfile

    from inspection.registry import load_model
    from inspection.runtime import load_export

    path = copy_model(small_model, models)
    at = run_page("app_pages/2_Train.py")
    assert not [button for button in at.get("download_button") if button.proto.label.startswith("Download the export")]
    at.button(key="manage_export").click().run(timeout=300)
    assert_clean(at)
    assert any(message.value.startswith(f"Exported {path.stem}") for message in at.success)
    folder = models / "exports" / path.stem
    with zipfile.ZipFile(folder.with_suffix(".zip")) as archive:
        assert f"{path.stem}/model.json" in archive.namelist()
    assert [button.proto.label for button in at.get("download_button")] == ["Download the export (zip)"]
    image = demo_image(demo_root, "hole")
    expected, got = load_model(path).predict([image]), load_export(folder, "onnx").predict([image])
    assert np.array_equal(got.verdicts, expected.verdicts)
    assert abs(float(got.raw_scores[0]) - float(expected.raw_scores[0])) <= 1e-3 * abs(float(expected.raw_scores[0]))
    update_header(path, lambda header: header)  # the file rewritten (as teaching does): the export is now stale
    at = run_page("app_pages/2_Train.py")
    assert_clean(at)
    assert any("earlier version of this model" in message.value for message in at.info)
    assert not at.get("download_button")


def test_batch_page_scores_with_the_models_current_export(models: Path, small_model: Path, demo_root: Path,
                                                          tmp_path: Path) -> None:
    """With a current export beside the model, the Batch page offers the torch-free runtime; its scores are the
    model's within 1e-3, and the caption names the runtime. A stale export is not offered."""
    pytest.importorskip("onnxruntime")  # the export extra, which CI installs
    import csv

    from inspection.export.bundle import export_beside
    from inspection.registry import load_model

    path = copy_model(small_model, models)
    folder = incoming_folder(demo_root, tmp_path / "incoming")
    at = run_page("app_pages/6_Batch.py")
    assert not [toggle for toggle in at.toggle if toggle.key == "batch_export"]  # no export yet
    export_beside(path)
    at = run_page("app_pages/6_Batch.py")
    at.text_input(key="batch_folder").set_value(str(folder)).run()
    at.toggle(key="batch_export").set_value(True).run()
    at.button(key="batch_start").click().run(timeout=120)
    assert_clean(at)
    scored_by = next(caption.value for caption in at.caption if caption.value.startswith("Model **small**"))
    assert " · on openvino" in scored_by or " · on onnx" in scored_by
    with open(at.session_state["batch_result"].summary.csv_path, newline="") as handle:
        exported = {row["file"]: float(row["raw_score"]) for row in csv.DictReader(handle)}
    files = sorted(folder.iterdir())
    expected = dict(zip((file.name for file in files), load_model(path).predict(files).raw_scores))
    assert exported.keys() == expected.keys()
    assert all(abs(exported[name] - expected[name]) <= 1e-3 * max(1.0, abs(expected[name])) for name in expected)
    update_header(path, lambda header: header)  # the model file rewritten (taught, say): its export is stale
    at = run_page("app_pages/6_Batch.py")
    assert not [toggle for toggle in at.toggle if toggle.key == "batch_export"]
