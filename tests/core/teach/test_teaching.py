"""Teaching a saved model (`inspection.teach`): learned exactly, undone exactly, recorded, refused with a reason."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from inspection.errors import TeachingError
from inspection.model import heldout
from inspection.model.modelfile import read_model_file
from inspection.registry import create_model, load_model
from inspection.scores.thresholds import conformal_threshold
from inspection.teach.decisions import CALIBRATION, DEFECT, KEPT_FOR_REFIT, LEARNED
from inspection.teach.teaching import defect_library, history, library_recall, taught_good_images, teach, undo
from inspection.workflows.recalibrate import MIN_RECALIBRATION_IMAGES, recalibrate, undo_recalibration
from inspection.workflows.refit import REFITTED_KEY
from inspection.workflows.train import fit_on_dataset

SETTINGS = {"patchcore": {}, "padim": {"n_features": 30}}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def fitted_file(request, demo_dataset, tmp_path_factory) -> Path:
    """A model of each teachable method fitted on the demo data (the pristine file: copy it before teaching)."""
    model = create_model(request.param, **SETTINGS[request.param]).fit([sample.path for sample in demo_dataset.train])
    return model.save(tmp_path_factory.mktemp("teach") / f"{request.param}.safetensors")


@pytest.fixture
def model_file(fitted_file, tmp_path) -> Path:
    return Path(shutil.copyfile(fitted_file, tmp_path / fitted_file.name))


def good_tests(demo_dataset, count: int) -> list[Path]:
    return [sample.path for sample in demo_dataset.test if sample.label == 0][:count]


def test_three_taught_then_undone_give_back_the_very_file(model_file, demo_dataset):
    tensors, header = read_model_file(model_file)
    fingerprint = load_model(model_file).fingerprint
    outcomes = teach(model_file, good_tests(demo_dataset, 3), who="tester")
    assert [outcome.decision.who for outcome in outcomes] == ["tester"] * 3
    taught = load_model(model_file)
    assert taught.fingerprint != fingerprint
    assert [decision.image_name for decision in history(model_file)] == [outcome.name for outcome in outcomes]
    changed = read_model_file(model_file)[0]
    assert any(changed[name].shape != tensors[name].shape or not torch.equal(changed[name], tensors[name])
               for name in tensors)
    for _ in range(3):
        undo(model_file)
    after_tensors, after_header = read_model_file(model_file)
    assert after_tensors.keys() == tensors.keys()
    assert all(torch.equal(after_tensors[name], tensors[name]) for name in tensors)
    assert after_header == header
    assert load_model(model_file).fingerprint == fingerprint
    with pytest.raises(TeachingError, match="nothing to undo"):
        undo(model_file)


def test_a_learned_image_scores_lower_and_the_decision_says_by_how_much(model_file, demo_dataset):
    images = good_tests(demo_dataset, 6)
    before = load_model(model_file).predict(images)
    outcomes = teach(model_file, images)
    after = load_model(model_file).predict(images)
    learned = [index for index, outcome in enumerate(outcomes) if outcome.decision.use == LEARNED]
    assert learned  # four in five are learned
    for index in learned:
        decision = outcomes[index].decision
        assert decision.score_after <= decision.score_before + 1e-6
        assert after.raw_scores[index] <= before.raw_scores[index] + 1e-6
    if load_model(model_file).name == "patchcore":
        assert all("rows_added" in outcomes[index].decision.learned for index in learned)


def test_a_seeded_share_goes_to_the_calibration_set_and_the_threshold_is_set_again(model_file, demo_dataset):
    calibration = load_model(model_file).calibration
    tensors, header = read_model_file(model_file)
    outcomes = teach(model_file, good_tests(demo_dataset, 10))
    to_calibration = [outcome for outcome in outcomes if outcome.decision.use == CALIBRATION]
    assert len(to_calibration) == 2  # one in five, exactly, over any ten
    now = load_model(model_file).calibration
    assert len(now.heldout_scores) == len(calibration.heldout_scores) + 2
    assert now.heldout_files[-2:] == [outcome.name for outcome in to_calibration]
    assert now.image_threshold == conformal_threshold(now.heldout_scores, calibration.image_fpr).threshold
    # Their features are kept beside the held-out images' (and go again with the decisions).
    assert load_model(model_file).info.extra["heldout_features"]["images"] == len(now.heldout_scores)
    for _ in range(10):
        undo(model_file)
    assert load_model(model_file).calibration == calibration
    after_tensors, after_header = read_model_file(model_file)
    assert after_tensors.keys() == tensors.keys() and after_header == header
    assert all(torch.equal(after_tensors[name], tensors[name]) for name in tensors)


def test_the_threshold_of_a_taught_model_stands_on_the_scores_it_gives_its_heldout_images_now(model_file,
                                                                                                demo_dataset):
    model = load_model(model_file)
    fit_scores = np.array(model.calibration.heldout_scores)
    count = len(fit_scores)
    assert model.info.extra["heldout_features"]["images"] == count
    # From the features kept at fit (half precision), the model as fitted gives its held-out images their scores.
    np.testing.assert_allclose(model.rescore_heldout(), fit_scores, rtol=2e-3)
    if model.name == "patchcore":  # it keeps the distances of fit and searches only rows taught since
        assert np.array_equal(model.rescore_heldout(), fit_scores)
    images = good_tests(demo_dataset, 6)
    outcomes = teach(model_file, images)
    uses = [outcome.decision.use for outcome in outcomes]
    # An image taught into the calibration set, then images learned after it: it is scored again with the others.
    assert CALIBRATION in uses and LEARNED in uses[uses.index(CALIBRATION):]
    taught = load_model(model_file)
    now = taught.calibration
    in_calibration = [image for image, use in zip(images, uses) if use == CALIBRATION]
    assert len(now.heldout_scores) == count + len(in_calibration)
    from_files = taught.predict([*now.heldout_files[:count], *in_calibration]).raw_scores
    np.testing.assert_allclose(now.heldout_scores, from_files, rtol=2e-3)
    assert np.array_equal(now.heldout_scores, taught.rescore_heldout())  # every one as the model scores it now
    assert now.image_threshold == conformal_threshold(now.heldout_scores, now.image_fpr).threshold
    if taught.name == "padim":  # its Gaussians moved: every held-out score with them (PatchCore's may stay)
        assert not np.allclose(now.heldout_scores[:count], fit_scores, rtol=1e-3)
    for _ in outcomes:
        undo(model_file)
    assert load_model(model_file).calibration == model.calibration


@pytest.mark.parametrize("mode", ["aspect", "tiles"])
def test_heldout_images_of_several_sizes_or_in_tiles_are_scored_again_as_predict_scores_them(mode, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, 96, 3), dtype=np.uint8) for height in [64, 160] * 10]
    model = create_model("patchcore", resize_mode=mode, resize=64, crop=32, tile_overlap=8, min_holdout=8, batch_size=3)
    model.fit(images)
    chunks = model.heldout
    if mode == "aspect":  # two working sizes: chunks of both
        assert len({tuple(chunk.features[0].shape[-2:]) for chunk in chunks}) == 2
    else:  # several tiles per image
        assert sum(chunk.owners.numel() for chunk in chunks) > model.info.n_heldout_images
    loaded = load_model(model.save(tmp_path / "model.safetensors"))
    np.testing.assert_allclose(loaded.rescore_heldout(), model.calibration.heldout_scores, rtol=2e-3)


def test_heldout_features_over_the_limit_are_not_kept_and_teaching_keeps_the_fits_scores(demo_dataset, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(heldout, "MAX_MIB", 0)
    model = create_model("patchcore").fit([sample.path for sample in demo_dataset.train])
    assert model.heldout == [] and "more than 0 MiB" in model.info.extra["heldout_features"]["reason"]
    path = model.save(tmp_path / "patchcore.safetensors")
    assert load_model(path).rescore_heldout() is None
    outcomes = teach(path, good_tests(demo_dataset, 2))
    assert any(outcome.decision.use == LEARNED for outcome in outcomes)
    count = len(model.calibration.heldout_scores)
    assert load_model(path).calibration.heldout_scores[:count] == model.calibration.heldout_scores


def test_a_recalibrated_set_is_not_scored_from_the_fits_features(model_file, demo_dataset):
    recalibrate(model_file, good_tests(demo_dataset, MIN_RECALIBRATION_IMAGES))
    recalibrated = load_model(model_file).calibration
    assert load_model(model_file).rescore_heldout() is None
    teach(model_file, [next(sample.path for sample in demo_dataset.train)])
    assert load_model(model_file).calibration.heldout_scores[:len(recalibrated.heldout_scores)] == \
        recalibrated.heldout_scores
    undo(model_file)
    undo_recalibration(model_file)
    assert load_model(model_file).rescore_heldout() is not None


def test_the_same_image_twice_changes_nothing_the_second_time(model_file, demo_dataset):
    image = good_tests(demo_dataset, 1)
    teach(model_file, image)
    written = model_file.read_bytes()
    again = teach(model_file, image)
    assert again[0].decision is None and "already" in again[0].unchanged
    assert model_file.read_bytes() == written
    with pytest.raises(TeachingError, match="undo that decision"):
        teach(model_file, image, DEFECT, defect_type="scratch")


def test_defects_go_to_the_library_and_change_no_tensor(model_file, demo_dataset):
    tensors = read_model_file(model_file)[0]
    defect = next(sample.path for sample in demo_dataset.test if sample.label == 1)
    with pytest.raises(TeachingError, match="type"):
        teach(model_file, [defect], DEFECT)
    outcome = teach(model_file, [defect], DEFECT, defect_type="scratch")[0]
    assert outcome.decision.use == "defect library"
    assert defect_library(model_file) == [{"image_hash": outcome.decision.image_hash, "image_name": str(defect),
                                           "type": "scratch"}]
    after = read_model_file(model_file)[0]
    assert all(torch.equal(after[name], tensors[name]) for name in tensors)


def test_images_unlike_the_training_ones_are_refused_and_nothing_is_written(model_file, demo_dataset, tmp_path):
    written = model_file.read_bytes()
    good = Image.open(good_tests(demo_dataset, 1)[0])
    other_size = tmp_path / "other-size.png"
    good.resize((good.width * 2, good.height)).save(other_size)
    with pytest.raises(TeachingError, match="pixels; the model's training images were"):
        teach(model_file, [other_size])
    gray = tmp_path / "gray.png"
    good.convert("L").save(gray)
    with pytest.raises(TeachingError, match="1 channel"):
        teach(model_file, [gray])
    other_part = tmp_path / "other-part.png"
    rng = np.random.default_rng(0)
    stripes = np.zeros((good.height, good.width, 3), np.uint8)
    stripes[:, ::8] = rng.integers(0, 255, 3, dtype=np.uint8)
    Image.fromarray(stripes).save(other_part)
    with pytest.raises(TeachingError, match="unlike the model's training images"):
        teach(model_file, [good_tests(demo_dataset, 2)[1], other_part])  # all or nothing: the first is not kept
    assert model_file.read_bytes() == written


def test_a_reader_never_sees_a_half_written_model(model_file, demo_dataset):
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                load_model(model_file)
            except BaseException as error:  # noqa: BLE001 — any failure to read is the test's finding
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        teach(model_file, good_tests(demo_dataset, 4))
        undo(model_file)
    finally:
        done.set()
        reader.join()
    assert failures == []


def test_a_method_that_cannot_learn_keeps_the_image_for_a_refit(demo_dataset, tmp_path):
    model = create_model("dfr", crop=64, resize=64, epochs=1, batch_positions=512)
    fit_on_dataset(model, demo_dataset, evaluate_test=False)  # records the dataset, which the refit fits on again
    path = model.save(tmp_path / "dfr.safetensors")
    tensors = read_model_file(path)[0]
    images = good_tests(demo_dataset, 2)
    outcomes = teach(path, images)
    assert {outcome.decision.use for outcome in outcomes} <= {KEPT_FOR_REFIT, CALIBRATION}
    kept = [str(Path(outcome.name).resolve()) for outcome in outcomes if outcome.decision.use == KEPT_FOR_REFIT]
    assert kept and taught_good_images(path) == kept
    after = read_model_file(path)[0]
    assert all(torch.equal(after[name], tensors[name]) for name in tensors)
    refit = run_cli("teach", "--model", str(path), "--refit")
    assert refit.returncode == 0, refit.stderr
    refitted = load_model(path)
    assert refitted.info.n_fit_images + refitted.info.n_heldout_images == len(demo_dataset.train) + len(kept)
    assert history(path) == [] and len(refitted.info.extra[REFITTED_KEY]) == len(kept)


def test_the_command_line_teaches_lists_and_undoes(model_file, demo_dataset):
    image = str(good_tests(demo_dataset, 1)[0])
    taught = run_cli("teach", "--model", str(model_file), "--good", image, "--who", "ana")
    assert taught.returncode == 0, taught.stderr
    assert "ana:" in taught.stdout and "is good" in taught.stdout
    listed = run_cli("teach", "--model", str(model_file), "--history")
    assert "1 decisions in force" in listed.stdout and image in listed.stdout
    undone = run_cli("teach", "--model", str(model_file), "--undo")
    assert undone.returncode == 0 and "undone:" in undone.stdout
    nothing = run_cli("teach", "--model", str(model_file), "--undo")
    assert nothing.returncode == 2 and "nothing to undo" in nothing.stderr and "Traceback" not in nothing.stderr


def test_the_defect_library_is_counted_per_type_by_evaluate(model_file, demo_dataset, tmp_path):
    defects = [sample for sample in demo_dataset.test if sample.label == 1][:4]
    for sample in defects:
        teach(model_file, [sample.path], DEFECT, defect_type=sample.defect_type)
    model = load_model(model_file)
    scores = model.predict([sample.path for sample in defects]).raw_scores
    expected: dict[str, dict[str, int]] = {}
    for sample, score in zip(defects, scores):
        counts = expected.setdefault(sample.defect_type, {"caught": 0, "total": 0})
        counts["caught"] += int(score > model.calibration.image_threshold)
        counts["total"] += 1
    assert library_recall(model) == expected
    lowest = float(scores.min()) - 1.0  # a threshold below every score catches them all
    assert all(counts["caught"] == counts["total"] for counts in library_recall(model, lowest).values())
    out = tmp_path / "evaluation.json"
    evaluated = run_cli("evaluate", "--model", str(model_file), "--data", str(demo_dataset.root), "--json", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(out.read_text())["library_recall"] == expected
