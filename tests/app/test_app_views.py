"""What the pages display, computed without a browser: results, threshold points, form fields, paging, charts."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_testing import train_small_model
from inspection.data.datasets import open_dataset
from inspection.data.images import load_image
from inspection.errors import DatasetError, FolderNotFoundError, ImageLoadError
from inspection.model.calibration import Calibration
from inspection.model.modelfile import read_model_info
from inspection.model.operating import (
    image_operating_point,
    image_roc,
    image_threshold_for_fpr,
    pixel_operating_point,
    pixel_roc,
    pixel_summary,
    pixel_threshold_for_fpr,
    recorded_test_scores,
)
from inspection.params import Param
from inspection.registry import load_model, methods
from inspection.results.image import defect_mask_on_original, image_result
from inspection.results.pictures import colorize, draw_boxes
from inspection.scores.thresholds import rates_at_threshold
from inspection_app.browse import (
    default_compare_samples,
    filter_samples,
    page_count,
    page_items,
    sample_details,
    thumbnail,
)
from inspection_app.charts import colorbar_figure, roc_figure, score_histogram, shared_colorscale
from inspection_app.forms import field_spec, form_fields, resolve_form
from inspection_app.sources import DataSource, folder_categories, known_datasets, open_source
from inspection_app.tables import evaluation_row
from inspection_app.threshold_view import confusion_rows, slider_bounds
from inspection_app.uploads import MAX_UPLOAD_MB_ENV, check_upload, content_digest, decode_upload, max_upload_mb


@pytest.fixture(scope="module")
def small_model_path(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("models") / "small.safetensors")


@pytest.fixture(scope="module")
def small_model(small_model_path: Path):
    return load_model(small_model_path)


@pytest.fixture(scope="module")
def header(small_model_path: Path) -> dict:
    return read_model_info(small_model_path)


@pytest.fixture(scope="module")
def calibration(header: dict) -> Calibration:
    return Calibration.from_dict(header["calibration"])


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- uploads


def test_uploads_of_wrong_type_size_or_content_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    check_upload("part.PNG", 1000)
    with pytest.raises(ImageLoadError, match=r"notes\.txt: file type '\.txt' is not an image type"):
        check_upload("notes.txt", 10)
    with pytest.raises(ImageLoadError, match=r"huge\.png: 3\.0 MB is above the upload limit of 2 MB"):
        check_upload("huge.png", 3 * 1024 * 1024, limit_mb=2)
    monkeypatch.setenv(MAX_UPLOAD_MB_ENV, "1")
    assert max_upload_mb() == 1
    with pytest.raises(ImageLoadError, match="above the upload limit of 1 MB"):
        decode_upload("big.png", b"\x89PNG" + b"0" * (2 * 1024 * 1024))
    monkeypatch.setenv(MAX_UPLOAD_MB_ENV, "lots")
    with pytest.raises(ValueError, match="INSPECTION_MAX_UPLOAD_MB='lots'"):
        max_upload_mb()
    monkeypatch.delenv(MAX_UPLOAD_MB_ENV)
    with pytest.raises(ImageLoadError, match="broken.png"):
        decode_upload("broken.png", b"\x89PNG\r\n\x1a\n truncated")
    image = np.zeros((10, 12, 3), np.uint8)
    assert decode_upload("ok.png", _png_bytes(image)).shape == (10, 12, 3)
    assert content_digest(b"a") != content_digest(b"b") and content_digest(image) == content_digest(image.copy())


# ---------------------------------------------------------------------------------------------- results


def test_image_result_of_a_defect_and_a_good_image(small_model, demo_root: Path) -> None:
    good = load_image(demo_root / "test" / "good" / "000.png")
    defect = load_image(demo_root / "test" / "hole" / "000.png")
    prediction = small_model.predict([good, defect])
    good_result = image_result(prediction, 0, good, "good.png")
    defect_result = image_result(prediction, 1, defect, "hole.png")
    assert defect_result.score > good_result.score
    assert defect_result.verdict == "DEFECT" and defect_result.is_defect
    assert good_result.verdict == "GOOD"
    assert defect_result.regions, "the obvious hole must give a region"
    height, width = defect.shape[:2]
    for x0, y0, x1, y1 in defect_result.boxes:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert defect_result.overlay().shape == defect.shape
    assert not np.array_equal(defect_result.overlay(), defect_result.overlay(with_boxes=False))
    rows = defect_result.region_rows()
    assert rows[0]["region"] == 1 and rows[0]["max score"] > 0.5
    # The region outlines the hole: its box overlaps the ground truth.
    mask = np.asarray(Image.open(demo_root / "ground_truth" / "hole" / "000_mask.png")) > 0
    x0, y0, x1, y1 = defect_result.boxes[0]
    assert mask[y0:y1, x0:x1].any()


def test_defect_mask_follows_the_threshold(small_model, calibration: Calibration, demo_root: Path) -> None:
    image = load_image(demo_root / "test" / "hole" / "000.png")
    result = image_result(small_model.predict([image]), 0, image, "hole.png")
    saved = defect_mask_on_original(result, calibration)
    lower = defect_mask_on_original(result, calibration, calibration.pixel_scale.denormalize(0.2))
    higher = defect_mask_on_original(result, calibration, calibration.pixel_scale.denormalize(2.0))
    assert saved.shape == image.shape[:2]
    assert higher.sum() <= saved.sum() < lower.sum()
    assert (saved <= lower).all() and (higher <= saved).all()


# ------------------------------------------------------------------------------------------- thresholds


def test_image_operating_point_matches_the_rates(header: dict, calibration: Calibration) -> None:
    table = recorded_test_scores(header["info"])
    assert table.scores.size == 50 and table.has_both_classes and table.defect.size == 30
    for threshold in (calibration.image_threshold, float(np.median(table.scores))):
        point = image_operating_point(table, calibration, threshold)
        expected = rates_at_threshold(table.scores, table.labels, threshold)
        assert (point.fpr, point.tpr, point.precision) == (expected["fpr"], expected["tpr"], expected["precision"])
        assert point.confusion == {key: expected[key] for key in ("tp", "fp", "tn", "fn")}
        assert point.heldout_fpr == calibration.heldout_fpr(threshold)
    everything = image_operating_point(table, calibration, float(table.scores.min()) - 1)
    assert (everything.fpr, everything.tpr) == (1.0, 1.0)
    curve = image_roc(table)
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1
    rows = confusion_rows(everything)
    assert rows == [{"actual": "defect", "predicted defect": 30, "predicted good": 0},
                    {"actual": "good", "predicted defect": 20, "predicted good": 0}]


def test_threshold_for_a_target_fpr_meets_it_on_held_out_images(calibration: Calibration) -> None:
    for target in (0.01, 0.1, 0.3):
        threshold = image_threshold_for_fpr(calibration, target)
        assert calibration.heldout_fpr(threshold) <= target
        pixel = pixel_threshold_for_fpr(calibration, target)
        assert calibration.heldout_pixel_fpr(pixel) == pytest.approx(target, abs=2e-3)
    assert image_threshold_for_fpr(calibration, 0.01) >= image_threshold_for_fpr(calibration, 0.3)
    with pytest.raises(ValueError, match="target FPR must be between 0 and 1"):
        image_threshold_for_fpr(calibration, 1.5)


def test_pixel_roc_and_operating_point(header: dict, calibration: Calibration) -> None:
    summary = pixel_summary(header["info"])
    assert summary.available
    curve = pixel_roc(summary)
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0) and (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert (np.diff(curve["fpr"]) >= 0).all() and (np.diff(curve["tpr"]) >= 0).all()
    point = pixel_operating_point(summary, calibration, calibration.pixel_threshold)
    assert 0 <= point.fpr < point.tpr <= 1
    # The model file records how many good and defect test pixels the quantiles summarise.
    counts = header["info"]["pixel_counts"]
    tp, fp = point.tpr * counts["defect"], point.fpr * counts["good"]
    assert point.precision == pytest.approx(tp / (tp + fp))
    assert point.confusion["tp"] + point.confusion["fn"] == pytest.approx(counts["defect"])
    summary.counts = {}
    shares = pixel_operating_point(summary, calibration, calibration.pixel_threshold)
    assert math.isnan(shares.precision)  # without counts only rates are known
    assert shares.confusion["tp"] + shares.confusion["fn"] == pytest.approx(1.0)
    assert confusion_rows(shares, counts=False)[0]["predicted defect"].endswith("%")
    summary.counts = {"good": 90_000, "defect": 10_000}
    counted = pixel_operating_point(summary, calibration, calibration.pixel_threshold)
    tp, fp = counted.tpr * 10_000, counted.fpr * 90_000
    assert counted.precision == pytest.approx(tp / (tp + fp))


def test_slider_bounds_cover_scores_and_threshold() -> None:
    low, high = slider_bounds([0.2, 3.0, float("nan")], 0.5)
    assert low < 0.0 and high > 3.0
    low, high = slider_bounds([], 7.0)
    assert low < 0 < 7.0 < high


# ---------------------------------------------------------------------------------------------- training


def test_every_declared_parameter_of_every_method_gets_a_field() -> None:
    for name, method_cls in methods().items():
        fields = form_fields(method_cls)
        shown = {spec.name for specs in fields.values() for spec in specs}
        assert shown == set(method_cls.param_set().names()), name
        # The backbone first when the method has one (methods trained from scratch have none), then the method's.
        assert list(fields)[:2] == ["backbone", "method"] if "backbone" in fields else list(fields)[0] == "method"
    patchcore = {spec.name: spec for specs in form_fields(methods()["patchcore"]).values() for spec in specs}
    assert patchcore["backbone"].widget == "select" and "efficientnet_lite0" in patchcore["backbone"].options
    assert patchcore["reweight"].widget == "checkbox"
    assert patchcore["neighbourhood"].widget == "int" and patchcore["neighbourhood"].maximum == 9
    assert patchcore["coreset_ratio"].widget == "float" and patchcore["coreset_ratio"].step == pytest.approx(0.001)
    assert patchcore["device"].options == ("auto", "cpu", "cuda")
    assert patchcore["layers"].widget == "text"


def test_field_spec_of_each_kind() -> None:
    assert field_spec(Param("flag", bool, True, "h")).widget == "checkbox"
    assert field_spec(Param("mode", str, "a", "h", choices=("a", "b"))).options == ("a", "b")
    assert field_spec(Param("zero", float, 0.0, "h", minimum=0.0, maximum=2.0)).step == pytest.approx(0.1)
    assert field_spec(Param("big", float, 250.0, "h")).step == pytest.approx(10.0)


def test_resolve_form_refuses_bad_values() -> None:
    patchcore = methods()["patchcore"]
    assert resolve_form(patchcore, {"crop": 128, "resize": 128, "unrelated": 1})["crop"] == 128
    with pytest.raises(ValueError, match="'neighbourhood' must be odd"):
        resolve_form(patchcore, {"neighbourhood": 4})
    with pytest.raises(ValueError, match="'coreset_ratio' must be <= 1.0"):
        resolve_form(patchcore, {"coreset_ratio": 3.0})


# ---------------------------------------------------------------------------------------------- datasets


def test_filtering_and_paging(demo_dataset) -> None:
    assert len(filter_samples(demo_dataset)) == 110
    holes = filter_samples(demo_dataset, "test", "hole")
    assert len(holes) == 10 and {sample.defect_type for sample in holes} == {"hole"}
    assert len(filter_samples(demo_dataset, "train", "good")) == 60
    assert filter_samples(demo_dataset, "train", "hole") == []
    with pytest.raises(ValueError, match="split must be one of"):
        filter_samples(demo_dataset, "validation")
    assert page_count(110, 24) == 5 and page_count(0, 24) == 1
    items = list(range(110))
    assert page_items(items, 5, 24) == list(range(96, 110))
    assert page_items(items, 99, 24) == list(range(96, 110)) and page_items(items, 0, 24) == list(range(24))
    with pytest.raises(ValueError, match="per_page must be at least 1"):
        page_count(10, 0)
    chosen = default_compare_samples(demo_dataset)
    assert [sample.defect_type for sample in chosen] == ["good", "hole", "scratch", "stain"]


def test_thumbnail_and_details(demo_dataset) -> None:
    sample = filter_samples(demo_dataset, "test", "hole")[0]
    small = thumbnail(sample.path, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    details = sample_details(sample, demo_dataset.root)
    assert details["file"] == "test/hole/000.png" and details["size"] == "256 × 256"
    assert details["mode"] == "RGB" and details["ground-truth mask"] == "yes"


def test_data_sources(demo_root: Path, tmp_path: Path) -> None:
    assert folder_categories(demo_root) is None
    assert folder_categories(demo_root.parent) == ["surface"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a dataset"):
        folder_categories(tmp_path / "empty")
    with pytest.raises(FolderNotFoundError, match="missing"):
        folder_categories(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no folder given"):
        folder_categories("  ")
    assert (str(demo_root.parent), "surface") in known_datasets(demo_root.parent.parent) or \
        (str(demo_root), None) in known_datasets(demo_root.parent)
    assert known_datasets(demo_root.parent) == [(str(demo_root), None)]
    assert open_source(DataSource("folder", str(demo_root.parent), "surface")).category == "surface"
    assert open_dataset(demo_root).root == open_source(DataSource("demo", str(demo_root))).root


def test_metric_rows(small_model_path: Path, header: dict) -> None:
    from inspection_app.library import list_models

    entries, _ = list_models(small_model_path.parent)
    from inspection_app.tables import metric_rows

    row = metric_rows(entries)[0]
    assert row["name"] == "small" and row["test images"] == 50 and row["device"].startswith(("cpu", "cuda"))
    measured = evaluation_row("small", header["info"]["metrics"])
    assert measured["image AUROC"] == row["image AUROC"]


# ------------------------------------------------------------------------------------------------ charts


def test_charts_show_what_they_say() -> None:
    histogram = score_histogram([0.1, 0.2], [0.9, 1.4, 2.0], 0.5, "scores")
    assert [trace.name for trace in histogram.data] == ["good (2)", "defect (3)"]
    assert histogram.layout.shapes[0].x0 == 0.5
    assert histogram.data[0].xbins == histogram.data[1].xbins  # shared bins: the bars line up
    assert histogram.data[0].xbins.start == 0.1 and histogram.data[0].xbins.size == pytest.approx(1.9 / 40)
    # One far outlier does not squeeze the decision zone: it is counted, not drawn.
    outlier = score_histogram(np.linspace(0, 1, 50), np.r_[np.linspace(0.5, 2, 30), 32.0], 0.5, "scores")
    assert outlier.data[1].name == "defect (31, 1 beyond 2.84 not drawn)" and max(outlier.data[1].x) == 2.0
    roc = roc_figure([0, 0.5, 1], [0, 0.8, 1], 0.5, 0.8, "ROC", auc=0.85)
    point = roc.data[-1]
    assert point.name == "current threshold" and (point.x[0], point.y[0]) == (0.5, 0.8)
    assert "AUROC 0.850" in roc.data[1].name
    assert roc.layout.xaxis.title.text.startswith("false-positive rate")
    scale = shared_colorscale()
    low, high = colorize(np.array([[0.0, 1.0]]))[0]
    assert scale[0][1] == f"rgb({low[0]},{low[1]},{low[2]})" and scale[-1][1] == f"rgb({high[0]},{high[1]},{high[2]})"
    assert colorbar_figure().data[0].colorscale[0][1] == scale[0][1]


def test_image_result_keeps_a_reconstruction(small_model, demo_root: Path) -> None:
    from dataclasses import replace

    image = load_image(demo_root / "test" / "scratch" / "000.png")
    prediction = small_model.predict([image])
    assert image_result(prediction, 0, image, "scratch.png").reconstruction is None
    rebuilt = np.full((1, 96, 96, 3), 7, np.uint8)
    result = image_result(replace(prediction, reconstructions=rebuilt), 0, image, "scratch.png")
    assert result.reconstruction is not None and result.reconstruction.shape == (96, 96, 3)
    assert (result.reconstruction == 7).all()


def test_panels_become_pictures_and_rows() -> None:
    from inspection.model.views import Panel
    from inspection.results.image import panel_picture
    from inspection_app.inspect_view import panel_rows

    picture = Panel("input", np.zeros((8, 8, 3), np.uint8))
    assert panel_picture(picture) is picture.image  # a picture is shown as it is
    ramp = np.linspace(0.0, 2.0, 64, dtype=np.float32).reshape(8, 8)
    own = panel_picture(Panel("error", ramp))  # its own min..max: the whole colour scale
    shared = panel_picture(Panel("error", ramp, value_range=(0.0, 4.0)))  # half of a shared scale
    assert own.shape == (8, 8, 3) and own.dtype == np.uint8
    assert not np.array_equal(own[-1, -1], shared[-1, -1]) and np.array_equal(own[0, 0], shared[0, 0])
    strip = Panel("steps", np.zeros((8, 40, 3), np.uint8))
    maps = [Panel(f"map {index}", ramp) for index in range(4)]
    rows = panel_rows([*maps[:2], strip, *maps[2:], picture])
    assert [[panel.title for panel in row] for row in rows] == [["map 0", "map 1"], ["steps"],
                                                                ["map 2", "map 3", "input"]]


def test_a_box_label_at_the_top_edge_sits_inside_the_box_clear_of_its_border() -> None:
    plain = np.full((256, 256, 3), 80, np.uint8)
    boxed = draw_boxes(plain, [(56, 0, 132, 82)])
    labelled = draw_boxes(plain, [(56, 0, 132, 82)], ["3.63"])
    text = np.argwhere((labelled != boxed).any(axis=2))  # the label's own pixels
    assert len(text) > 0
    assert text[:, 0].min() > 2 and text[:, 1].min() > 56 + 2  # below the top border, right of the left one
    assert text[:, 0].max() < 82 and text[:, 1].max() < 132  # inside the box
