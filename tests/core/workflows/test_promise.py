"""Thresholds that keep their promise: the split-conformal rule, the exact interval of a measured FPR, the
report on unseen good images, and recalibration on new good images (with its undo)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_testing import SMALL_PARAMS, copy_model, train_small_model
from conftest import REPO
from inspection.errors import InspectionError
from inspection.model.calibration import Calibration
from inspection.model.modelfile import read_model_file, read_model_header, save_thresholds
from inspection.model.operating import OperatingPoint, image_threshold_for_fpr, promise_check, promise_report
from inspection.registry import load_model
from inspection.scores.thresholds import clopper_pearson, conformal_promise, conformal_threshold, threshold_at_fpr
from inspection.workflows.evaluate import CHECKED_FPR_TARGETS
from inspection.workflows.recalibrate import MIN_RECALIBRATION_IMAGES, recalibrate, undo_recalibration
from inspection.workflows.train import VERIFICATION_FRACTION, VERIFICATION_MINIMUM, VERIFICATION_SOURCE, train


def test_conformal_rank_by_hand() -> None:
    scores = np.arange(1, 21, dtype=float)[::-1]  # 20 held-out scores, in any order
    # ⌈21 · 0.95⌉ = 20: the largest score; ⌈21 · 0.9⌉ = 19.
    assert conformal_threshold(scores, 0.05).threshold == 20.0
    assert conformal_threshold(scores, 0.10).threshold == 19.0
    assert conformal_threshold(scores, 0.10).promised_fpr == 0.10
    # The old empirical rule allowed one score of 20 above the threshold: it sits one rank lower.
    assert threshold_at_fpr(scores, 0.05) == 19.0


def test_too_few_held_out_scores_weaken_the_promise_and_say_so() -> None:
    few = conformal_threshold(np.linspace(0, 1, 10), 0.05)  # needs n >= 1/0.05 - 1 = 19
    assert few.threshold == 1.0 and not few.keeps_target
    assert few.promised_fpr == pytest.approx(1 / 11)
    assert "too few" in few.describe() and "at least 19" in few.describe() and "9.1%" in few.describe()
    enough = conformal_threshold(np.linspace(0, 1, 19), 0.05)
    assert enough.keeps_target and "at most 5.0%" in enough.describe()


@pytest.mark.parametrize("n, target", [(21, 0.05), (21, 0.10), (60, 0.05), (200, 0.01)])
def test_conformal_threshold_keeps_its_promise_on_new_good_scores(n: int, target: float) -> None:
    """Over many draws of a calibration set, new good scores from the same distribution exceed the conformal
    threshold at most `target` of the time on average — and not far below it (it is not needlessly strict).
    The old empirical rule breaks the promise for small n."""
    rng = np.random.default_rng(0)
    trials, new = 4000, 500
    calibration = rng.gumbel(size=(trials, n))
    fresh = rng.gumbel(size=(trials, new))
    conformal = np.array([conformal_threshold(row, target).threshold for row in calibration])
    rate = float((fresh > conformal[:, None]).mean())
    standard_error = math.sqrt(target * (1 - target) / (trials * new)) + 0.2 * target / math.sqrt(trials)
    assert rate <= target + 3 * standard_error
    rank = math.ceil((n + 1) * (1 - target))
    assert rate == pytest.approx((n + 1 - rank) / (n + 1), abs=4 * standard_error)  # the exact expectation
    empirical = np.array([threshold_at_fpr(row, target) for row in calibration])
    if n * target >= 1:  # the empirical rule lets n·α held-out scores lie above: too many for new ones
        assert float((fresh > empirical[:, None]).mean()) > target + 3 * standard_error


def test_conformal_promise_at_any_threshold() -> None:
    scores = np.arange(1, 21, dtype=float)
    assert conformal_promise(scores, 20.0) == pytest.approx(1 / 21)
    assert conformal_promise(scores, 18.5) == pytest.approx(3 / 21)
    assert conformal_promise(scores, 0.0) == 1.0
    assert math.isnan(conformal_promise([], 1.0))
    for target in (0.05, 0.1, 0.3):
        assert conformal_promise(scores, conformal_threshold(scores, target).threshold) <= target


def test_clopper_pearson_known_values() -> None:
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-9)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-9)
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-5) and high == pytest.approx(0.812914, abs=1e-5)
    low, high = clopper_pearson(1, 20)
    assert low == pytest.approx(0.001265, abs=1e-5) and high == pytest.approx(0.248733, abs=1e-5)
    assert all(math.isnan(value) for value in clopper_pearson(0, 0))


def test_promise_check_speaks_only_when_the_target_lies_outside_the_interval() -> None:
    def point(flagged: int, n: int) -> OperatingPoint:
        return OperatingPoint(0.0, flagged / n, math.nan, math.nan, {}, 0.0, 0.05, clopper_pearson(flagged, n), n)

    assert promise_check(0.05, point(1, 20)) is None
    kind, words = promise_check(0.05, point(8, 20))
    assert kind == "warning" and "40.0%" in words and "Recalibrate" in words and "lighting" in words
    kind, words = promise_check(0.10, point(0, 400))
    assert kind == "info" and "fewer false alarms" in words
    no_test = OperatingPoint(0.0, math.nan, math.nan, math.nan, {}, 0.0)
    assert promise_check(0.05, no_test) is None  # no good test images: nothing to say


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("models") / "small.safetensors")


def test_every_evaluation_reports_the_promise_on_unseen_good_images(small_model: Path) -> None:
    header = read_model_header(small_model)
    calibration, metrics = header.calibration, header.info["metrics"]
    assert calibration.image_rule == "conformal" and calibration.image_promise
    assert metrics["fpr_target"] == calibration.image_fpr
    assert metrics["n_unseen_good"] == 20  # the demo's good test images: neither fitted nor calibrated on
    low, high = metrics["fpr_unseen_good_ci"]
    assert low <= metrics["fpr_unseen_good"] <= high
    good = [record["score"] for record in header.info["test_scores"] if record["label"] == 0]
    assert metrics["fpr_unseen_good"] == pytest.approx(np.mean(np.array(good) > calibration.image_threshold))
    defects = [record["score"] for record in header.info["test_scores"] if record["label"] == 1]
    assert metrics["defects_flagged"] == pytest.approx(np.mean(np.array(defects) > calibration.image_threshold))
    assert [row["target"] for row in metrics["fpr_unseen_good_by_target"]] == list(CHECKED_FPR_TARGETS)
    for row in metrics["fpr_unseen_good_by_target"]:
        threshold = image_threshold_for_fpr(calibration, row["target"])
        assert row["fpr"] == pytest.approx(np.mean(np.array(good) > threshold))
    assert 0 <= metrics["pixel_fpr_unseen_good"] < 0.05
    assert "false_boxes_per_good_image" in metrics


def test_without_a_test_split_a_verification_share_is_held_out(demo_root: Path, tmp_path: Path) -> None:
    """A dataset of good images only: a seeded share is kept from fitting and calibration, and the thresholds are
    measured on it, as on a test split's good images."""
    root = tmp_path / "goods-only"
    shutil.copytree(demo_root / "train", root / "train")
    n_good = len(list((root / "train" / "good").glob("*.png")))
    result = train("patchcore", dict(SMALL_PARAMS), root, out=tmp_path / "model")
    header = read_model_header(result.path)
    metrics = header.info["metrics"]
    assert metrics["unseen_good_source"] == VERIFICATION_SOURCE and metrics["n_defect"] == 0
    verified = metrics["n_unseen_good"]
    assert verified == max(VERIFICATION_MINIMUM, math.ceil(VERIFICATION_FRACTION * n_good))
    assert len(header.info["test_scores"]) == verified and math.isnan(metrics["image_auroc"])
    held, fitted = len(header.calibration.heldout_scores), header.info["n_fit_images"]
    assert held + fitted + verified == n_good  # three disjoint shares of the good images
    low, high = metrics["fpr_unseen_good_ci"]
    assert low <= metrics["fpr_unseen_good"] <= high
    assert "held-out verification images" in promise_report(header.calibration, metrics)
    # Without evaluation nothing is held back.
    plain = train("patchcore", dict(SMALL_PARAMS), root, out=tmp_path / "plain", evaluate_test=False)
    header = read_model_header(plain.path)
    assert len(header.calibration.heldout_scores) + header.info["n_fit_images"] == n_good


def _brighter_good_images(demo_root: Path, folder: Path, count: int = 12, shift: int = 60) -> Path:
    """Good parts photographed under brighter light: the same surfaces, every pixel `shift` levels up."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((demo_root / "train" / "good").glob("*.png"))[:count]:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        Image.fromarray(np.clip(pixels + shift, 0, 255).astype(np.uint8)).save(folder / path.name)
    return folder


def test_recalibration_rewrites_only_the_thresholds_and_is_undone(small_model: Path, demo_root: Path,
                                                                 tmp_path: Path) -> None:
    model_path = copy_model(small_model, tmp_path / "models")
    brighter = sorted(_brighter_good_images(demo_root, tmp_path / "brighter").glob("*.png"))
    tensors_before, _ = read_model_file(model_path)
    before = read_model_header(model_path)
    flagged_before = load_model(model_path).predict(brighter).verdicts.mean()

    after = recalibrate(model_path, brighter)
    calibration = after.calibration
    assert calibration.image_threshold > before.calibration.image_threshold  # brighter good parts score higher
    assert calibration.heldout_scores != before.calibration.heldout_scores
    assert len(calibration.history) == 1
    entry = calibration.history[0]
    assert entry["image_threshold"] == before.calibration.image_threshold
    assert entry["pixel_threshold"] == before.calibration.pixel_threshold
    assert "12 new good images" in entry["reason"] and "12 new good images" in calibration.image_promise
    tensors_after, _ = read_model_file(model_path)
    assert tensors_after.keys() == tensors_before.keys()
    assert all(np.array_equal(tensors_after[key].numpy(), tensors_before[key].numpy()) for key in tensors_before)
    assert after.params == before.params and after.info["metrics"] == before.info["metrics"]
    assert load_model(model_path).predict(brighter).verdicts.mean() < flagged_before
    # The recalibrated model still shows its threshold at 0.5.
    assert calibration.normalized_image_threshold == pytest.approx(0.5)

    restored = undo_recalibration(model_path)
    assert restored.calibration.to_dict() == before.calibration.to_dict()
    with pytest.raises(InspectionError, match="never recalibrated"):
        undo_recalibration(model_path)


def test_recalibrating_thresholds_set_by_hand_uses_the_fit_settings_and_undo_brings_them_back(
        small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    """A threshold set by hand has no target: a recalibration sets both again by the rules of fit (the model's
    settings), and its undo brings back the hand-set thresholds and what the file stated of them, exactly."""
    model_path = copy_model(small_model, tmp_path / "models")
    fitted = read_model_header(model_path).calibration
    save_thresholds(model_path, image_threshold=float(np.median(fitted.heldout_scores)),
                    pixel_threshold=fitted.pixel_threshold * 0.8)
    before = read_model_header(model_path)
    assert before.calibration.image_rule == before.calibration.pixel_rule == "manual"
    brighter = sorted(_brighter_good_images(demo_root, tmp_path / "brighter").glob("*.png"))
    calibration = recalibrate(model_path, brighter).calibration
    assert calibration.image_rule == "conformal" and calibration.image_fpr == before.params["image_fpr"]
    assert calibration.pixel_rule == before.params["pixel_rule"] == "false_regions"
    assert calibration.false_regions == before.params["false_regions"]
    assert "set by hand" not in calibration.image_promise and "12 new good images" in calibration.image_promise
    entry = calibration.history[-1]
    assert entry["image_rule"] == entry["pixel_rule"] == "manual"
    restored = undo_recalibration(model_path)
    assert restored.calibration.to_dict() == before.calibration.to_dict()
    assert restored.calibration.image_promise.startswith("set by hand")


def test_recalibration_needs_enough_images(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    model_path = copy_model(small_model, tmp_path / "models")
    few = sorted(_brighter_good_images(demo_root, tmp_path / "few", count=3).glob("*.png"))
    with pytest.raises(InspectionError, match=f"at least {MIN_RECALIBRATION_IMAGES}"):
        recalibrate(model_path, few)
    assert read_model_header(model_path).calibration.history == []


def test_recalibrate_on_the_command_line(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    model_path = copy_model(small_model, tmp_path / "models")
    folder = _brighter_good_images(demo_root, tmp_path / "new-good")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inspection", "--quiet", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=600)

    done = cli("recalibrate", "--model", str(model_path), str(folder))
    assert done.returncode == 0, done.stderr
    assert "recalibrated on 12 good images" in done.stdout and "--undo" in done.stdout
    assert len(read_model_header(model_path).calibration.history) == 1
    undone = cli("recalibrate", "--model", str(model_path), "--undo")
    assert undone.returncode == 0, undone.stderr
    assert read_model_header(model_path).calibration.history == []
    again = cli("recalibrate", "--model", str(model_path), "--undo")
    assert again.returncode != 0 and "never recalibrated" in again.stderr and "Traceback" not in again.stderr
    nothing = cli("recalibrate", "--model", str(model_path))
    assert nothing.returncode != 0 and "new good images" in nothing.stderr


def test_a_history_that_is_not_a_list_is_refused(small_model: Path) -> None:
    values = json.loads(json.dumps(read_model_header(small_model).calibration.to_dict()))
    values["history"] = {"image_threshold": 1}
    with pytest.raises(InspectionError, match="history"):
        Calibration.from_dict(values)
    values["history"] = []
    values["image_rule"] = "guess"
    with pytest.raises(InspectionError, match="image_rule"):
        Calibration.from_dict(values)


def test_bench_writes_the_target_versus_measured_table() -> None:
    from inspection.bench.run import promise_table

    row = {"method": "patchcore", "category": "bottle", "n_heldout_images": 21, "n_unseen_good": 20,
           "fpr_unseen_good_by_target": [
               {"target": 0.01, "promised": 1 / 22, "fpr": 0.0, "ci": [0.0, 0.168]},
               {"target": 0.05, "promised": 0.05, "fpr": 0.05, "ci": [0.0013, 0.2487]}]}
    table = promise_table([row])
    assert "| method | category | held-out good | unseen good | target 1% | target 5% |" in table
    assert "| patchcore | bottle | 21 | 20 | 0.0% [0.0%, 16.8%] (promise 4.5%) | 5.0% [0.1%, 24.9%] |" in table
    assert promise_table([{"method": "x"}]) == ""
