"""One verdict rule (`Calibration.is_defect`: defect iff raw score > image threshold) decided the same way by every
place that decides one, and thresholds saved by hand that state what they are and what they keep."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from app_testing import copy_model, demo_image, train_small_model
from conftest import FIXTURES
from inspection.data.images import load_image
from inspection.errors import ModelFileError
from inspection.model.calibration import Calibration
from inspection.model.header import ModelHeader
from inspection.model.modelfile import read_model_header, save_thresholds
from inspection.model.operating import PixelSummary, ScoreTable, image_operating_point, promise_report
from inspection.registry import load_model
from inspection.results.image import image_result
from inspection.scores.thresholds import conformal_promise, promise_at_threshold, rate_above
from inspection.workflows.batch import collect_inputs, score_files
from inspection.workflows.evaluate import unseen_good_rates
from inspection_app.threshold_view import ThresholdLevel, threshold_level


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("models") / "small.safetensors")


def _calibration() -> Calibration:
    maps = np.random.default_rng(1).random((21, 32, 32)).astype(np.float32)
    return Calibration.from_good(np.linspace(1.0, 2.0, 21), maps, 0.05, 0.05)


# ---------------------------------------------------------------------------------------------- the rule


def test_is_defect_is_a_score_above_the_image_threshold() -> None:
    calibration = _calibration()
    at = calibration.image_threshold
    assert calibration.is_defect(at) is False  # exactly at the threshold: good
    assert calibration.is_defect(np.nextafter(at, np.inf)) is True
    assert calibration.is_defect(float("nan")) is False
    verdicts = calibration.is_defect(np.array([at - 1, at, at + 1, np.nan]))
    assert verdicts.dtype == bool and verdicts.tolist() == [False, False, True, False]
    assert calibration.is_defect(np.array([1.5, 2.5]), threshold=2.0).tolist() == [False, True]


def test_every_place_decides_by_the_one_rule(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    """A prediction's verdicts, each image's result, the batch rows, the evaluation's count, the Threshold page's
    false alarms and misses and its operating point agree — a score exactly at the threshold is GOOD in all."""
    paths = [demo_image(demo_root, kind, index) for kind in ("good", "hole") for index in range(3)]
    model_path = copy_model(small_model, tmp_path / "models")
    scores = load_model(model_path).predict(paths).raw_scores
    at = float(np.sort(scores)[2])  # the threshold on one image's own score
    save_thresholds(model_path, image_threshold=at)
    model = load_model(model_path)
    calibration = model.calibration
    assert calibration.image_threshold == at
    prediction = model.predict(paths)
    verdicts = prediction.verdicts
    expected = [bool(score > at) for score in prediction.raw_scores]
    assert verdicts.tolist() == expected and 0 < sum(expected) < len(expected)
    assert not verdicts[int(np.argmin(np.abs(prediction.raw_scores - at)))]  # at the threshold: good
    results = [image_result(prediction, index, load_image(path), path.name) for index, path in enumerate(paths)]
    assert [result.is_defect for result in results] == expected
    assert [result.verdict for result in results] == ["DEFECT" if flag else "GOOD" for flag in expected]
    assert [calibration.is_defect(float(score)) for score in prediction.raw_scores] == expected
    summary = score_files(model, collect_inputs(paths), tmp_path / "out", batch_size=8, overlays="none")
    assert [row["verdict"] == "defect" for row in summary.rows] == expected
    scores = prediction.raw_scores
    assert unseen_good_rates(calibration, scores, np.empty(0))["fpr_unseen_good"] == pytest.approx(np.mean(expected))
    files, types = [str(path) for path in paths], ["good"] * len(paths)
    as_good = ThresholdLevel("image", calibration, ScoreTable(scores, np.zeros(len(paths), np.int64), files, types),
                             PixelSummary(np.empty(0), np.empty(0)))
    false_alarms, _ = as_good.errors_at(at)
    assert sorted(record["file"] for record in false_alarms) == sorted(f for f, flag in zip(files, expected) if flag)
    as_defect = ThresholdLevel("image", calibration, ScoreTable(scores, np.ones(len(paths), np.int64), files, types),
                               PixelSummary(np.empty(0), np.empty(0)))
    _, misses = as_defect.errors_at(at)
    assert sorted(record["file"] for record in misses) == sorted(f for f, flag in zip(files, expected) if not flag)
    point = image_operating_point(as_good.table, calibration, at)
    assert point.confusion["fp"] == sum(expected) and point.fpr == pytest.approx(np.mean(expected))


# ------------------------------------------------------------------------------------------ set by hand


def test_a_threshold_saved_by_hand_states_what_it_keeps(small_model: Path, tmp_path: Path) -> None:
    model_path = copy_model(small_model, tmp_path / "models")
    before = read_model_header(model_path)
    fitted = before.calibration
    assert fitted.image_rule == "conformal" and fitted.pixel_rule == "false_regions"
    held_out = np.asarray(fitted.heldout_scores)
    image_threshold = float(np.quantile(held_out, 0.7))  # lower than fit: more held-out images above it
    pixel_threshold = float(fitted.pixel_threshold * 0.9)
    save_thresholds(model_path, image_threshold=image_threshold)
    header = read_model_header(model_path)
    calibration = header.calibration
    assert calibration.image_rule == "manual" and calibration.image_threshold == image_threshold
    assert calibration.image_fpr == pytest.approx(float(np.mean(held_out > image_threshold)))
    assert calibration.image_fpr != fitted.image_fpr
    promise = promise_at_threshold(held_out, image_threshold)
    assert promise.promised_fpr == conformal_promise(held_out, image_threshold)
    assert calibration.image_promise == f"set by hand; {promise.describe()}"
    assert f"at most {conformal_promise(held_out, image_threshold):.1%}" in calibration.image_promise
    assert f"from {held_out.size} held-out good images" in calibration.image_promise
    assert calibration.image_promise_at().promised_fpr == promise.promised_fpr
    # The pixel level is untouched, the fit's target stays the model's setting, the threshold is 0.5 again.
    assert (calibration.pixel_rule, calibration.pixel_threshold) == (fitted.pixel_rule, fitted.pixel_threshold)
    assert header.params == before.params and header.params["image_fpr"] == fitted.image_fpr
    assert calibration.normalized_image_threshold == pytest.approx(0.5)
    assert promise_report(calibration, {}).startswith("Image threshold: set by hand; false alarms on new good parts")

    save_thresholds(model_path, pixel_threshold=pixel_threshold)
    calibration = read_model_header(model_path).calibration
    assert calibration.pixel_rule == "manual" and calibration.false_regions is None
    assert calibration.pixel_fpr == pytest.approx(rate_above(fitted.heldout_pixel_quantiles, pixel_threshold))
    assert calibration.image_rule == "manual" and calibration.image_threshold == image_threshold
    assert "Pixel threshold set by hand" in promise_report(calibration, {})
    # The Threshold page's words and target field.
    image_view = threshold_level(read_model_header(model_path), "image")
    assert image_view.set_by_hand and "set by hand" in image_view.saved_words
    assert f"at most {promise.promised_fpr:.1%}" in image_view.saved_words
    assert f"from the {held_out.size} good images held out" in image_view.saved_words
    assert image_view.saved_target_fpr == round(promise.promised_fpr, 4)
    pixel_view = threshold_level(read_model_header(model_path), "pixel")
    assert "set by hand" in pixel_view.saved_words and pixel_view.saved_target_fpr == round(calibration.pixel_fpr, 4)


def test_a_threshold_set_at_fit_says_its_target() -> None:
    calibration = _calibration()
    view = ThresholdLevel("image", calibration, ScoreTable(np.empty(0), np.empty(0, np.int64)),
                          PixelSummary(np.empty(0), np.empty(0)))
    assert not view.set_by_hand and "set by the split-conformal rule for a 5.0% target" in view.saved_words
    assert view.saved_target_fpr == 0.05
    assert "set by hand" not in promise_report(calibration, {})


def test_rates_of_a_threshold_set_by_hand_may_be_0_or_1_a_target_may_not() -> None:
    calibration = _calibration()
    everything = calibration.set_by_hand(image_threshold=0.0, pixel_threshold=-1.0)  # below every held-out score
    assert (everything.image_fpr, everything.pixel_fpr) == (1.0, 1.0)
    assert "at most 100.0%" in everything.image_promise
    nothing = calibration.set_by_hand(image_threshold=10.0, pixel_threshold=10.0)
    assert (nothing.image_fpr, nothing.pixel_fpr) == (0.0, 0.0)
    assert nothing.image_promise_at().promised_fpr == pytest.approx(1 / 22)
    for chosen in (everything, nothing):
        assert Calibration.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen
    values = nothing.to_dict()
    values["image_rule"] = "conformal"  # a target of 0 is no target
    with pytest.raises(ModelFileError, match="image_fpr"):
        Calibration.from_dict(values)
    values = nothing.to_dict()
    values["pixel_fpr"] = 1.5
    with pytest.raises(ModelFileError, match="pixel_fpr"):
        Calibration.from_dict(values)
    values["pixel_rule"] = "guess"
    with pytest.raises(ModelFileError, match="pixel_rule"):
        Calibration.from_dict(values)
    with pytest.raises(ValueError, match="held-out"):
        Calibration(1.0, 1.0, 0.05, 0.05, calibration.image_scale, calibration.pixel_scale).set_by_hand(2.0)


def test_a_file_of_version_0_1_still_loads_and_takes_a_threshold_set_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    shutil.copy(FIXTURES / "patchcore_v0.1.0.safetensors", path)
    old = read_model_header(path).calibration
    assert old.image_rule == "empirical" and old.pixel_rule == "pixel_fpr" and old.image_promise == ""
    assert promise_report(old, {}).startswith("Image threshold: set on the held-out good images, at most 5.0%")
    threshold = float(np.median(old.heldout_scores))
    save_thresholds(path, image_threshold=threshold)
    header = read_model_header(path)
    assert ModelHeader.from_dict(header.to_dict()) == header
    assert header.calibration.image_rule == "manual"
    assert header.calibration.image_fpr == pytest.approx(np.mean(np.asarray(old.heldout_scores) > threshold))
    assert load_model(path).calibration == header.calibration
    assert not math.isnan(header.calibration.image_promise_at().promised_fpr)
