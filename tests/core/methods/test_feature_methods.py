"""PatchCore and PaDiM end to end on the demo data (real EfficientNet-Lite0 weights): progress, calibration,
metrics, predictions, seeds, their options, other backbones."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import random_images
from inspection.ops.coreset import greedy_coreset, random_projection
from inspection.registry import create_model
from inspection.scores.regions import count_regions
from inspection.workflows.evaluate import evaluate


def test_fit_reports_progress_and_calibrates_on_held_out_images(fitted, demo_dataset):
    model, _, reports = fitted
    assert {"features", "calibrate"} <= {report.stage for report in reports}
    n_train = len(demo_dataset.train)
    # Enough for the 5 % threshold not to be the highest held-out score (39), never more than a third.
    assert model.info["n_heldout_images"] == min(max(39, math.ceil(0.1 * n_train)), n_train // 3)
    assert model.info["n_fit_images"] + model.info["n_heldout_images"] == n_train
    calibration = model.calibration
    assert len(calibration.heldout_scores) == model.info["n_heldout_images"]
    assert calibration.heldout_fpr() <= model.image_fpr
    assert calibration.normalized_image_threshold == pytest.approx(0.5)
    assert calibration.normalized_pixel_threshold == pytest.approx(0.5)
    # The pixel threshold keeps false regions on good parts rare: at most 0.1 per held-out good image.
    assert calibration.pixel_rule == "false_regions"
    held_out = model.predict(calibration.heldout_files).raw_maps
    allowed = math.floor(0.1 * len(held_out))
    assert count_regions(held_out, calibration.pixel_threshold) <= allowed
    assert count_regions(held_out, calibration.pixel_threshold * 0.98) > allowed  # and it is the lowest such


def test_the_pixel_fpr_rule_is_still_there(demo_dataset):
    model = create_model("padim", pixel_rule="pixel_fpr", crop=96, resize=96, n_features=30)
    model.fit([sample.path for sample in demo_dataset.train])
    assert abs(model.calibration.heldout_pixel_fpr() - model.pixel_fpr) < 0.01


def test_demo_metrics_are_informative(fitted):
    model, evaluation, _ = fitted
    metrics = evaluation.metrics
    assert metrics["n_test"] == 50 and metrics["n_defect"] == 30
    # Good detectors on obvious-to-faint synthetic defects: clearly better than chance, not all perfect.
    assert 0.75 <= metrics["image_auroc"] <= 1.0
    assert metrics["pixel_auroc"] >= 0.8 and metrics["aupro"] >= 0.5
    assert min(metrics["image_auroc"], metrics["pixel_auroc"], metrics["aupro"]) < 1.0
    assert metrics["predict_ms_per_image"] > 0 and "cpu" in metrics["device"]
    assert len(evaluation.records) == 50 and evaluation.f1_image_threshold is not None


def test_predictions_have_maps_at_working_resolution_regions_and_verdicts(fitted, demo_dataset):
    model, _, _ = fitted
    obvious = [sample for sample in demo_dataset.test if sample.defect_type == "hole"][:1]
    good = [sample for sample in demo_dataset.test if sample.label == 0][:1]
    prediction = model.predict([obvious[0].path, good[0].path])
    # PatchCore sees the whole 256 × 256 image by default (aspect mode), the others its 224 × 224 centre.
    side = 256 if model.preprocessing.mode == "aspect" else 224
    assert prediction.raw_maps.shape == (2, side, side) and prediction.raw_maps.dtype == np.float32
    assert prediction.image_scores[0] > prediction.image_scores[1]
    assert prediction.verdicts.tolist() == [True, False]
    regions = prediction.regions(0)
    assert regions and regions[0].max_score > 0.5
    placed = prediction.map_on_original(0)
    # A centre crop leaves a border not inspected; the whole image leaves none.
    assert placed.shape == (256, 256) and np.isnan(placed).any() == (model.preprocessing.mode == "center_crop")


def test_same_seed_same_model(demo_dataset):
    images = [sample.path for sample in demo_dataset.train[:24]]
    first = create_model("patchcore", coreset_ratio=0.05).fit(images)
    second = create_model("patchcore", coreset_ratio=0.05).fit(images)
    assert torch.equal(first.memory_bank, second.memory_bank)
    third = create_model("patchcore", coreset_ratio=0.05, seed=1).fit(images)
    assert not torch.equal(first.memory_bank, third.memory_bank)


def test_patchcore_reweighting_and_projection_options_run(demo_dataset):
    images = [sample.path for sample in demo_dataset.train[:20]]
    model = create_model("patchcore", reweight=True, embed_dim=64, projection_dim=0).fit(images)
    prediction = model.predict(images[:2])
    assert model.memory_bank.shape[1] == 64 and np.isfinite(prediction.raw_scores).all()


def test_patchcore_image_score_is_the_largest_patch_or_the_largest_value_of_the_blurred_map(demo_dataset):
    images = [sample.path for sample in demo_dataset.train[:20]]
    model = create_model("patchcore", resize_mode="full", sigma=8.0).fit(images)
    test = [sample.path for sample in demo_dataset.test[:4]]
    by_patch = model.predict(test)
    model.set_params(image_score="map")
    by_map = model.predict(test)
    np.testing.assert_allclose(by_map.raw_scores, by_map.raw_maps.reshape(len(test), -1).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(by_map.raw_maps, by_patch.raw_maps)
    # Bilinear upsampling and a normalised blur never exceed the largest patch score, and here they lower it.
    assert (by_map.raw_scores < by_patch.raw_scores).all()


def test_patchcore_selects_its_bank_chunk_by_chunk_as_the_features_arrive():
    """coreset_chunk: each chunk of good patches gives its share of the bank, selected by the same greedy on the
    same projection; 0 keeps the one selection over all patches."""
    batches = [torch.from_numpy(np.stack(random_images(4, 64, seed=seed))).permute(0, 3, 1, 2).float() / 255
               for seed in range(3)]

    def fitted_bank(chunk: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model = create_model("patchcore", weights="random", coreset_ratio=0.05, coreset_chunk=chunk)
        model._ensure_setup()
        patches = [model.embed(model.features(images))[0] for images in batches]
        model._fit_batches(lambda: iter(batches), 12, lambda report: None)
        return model.memory_bank, patches

    def selection(patches: torch.Tensor, starts: torch.Generator) -> torch.Tensor:
        start = int(torch.randint(patches.shape[0], (1,), generator=starts))
        chosen = greedy_coreset(random_projection(patches, 128, 0), math.ceil(0.05 * patches.shape[0]), start)
        return patches[chosen]

    whole, patches = fitted_bank(0)
    torch.testing.assert_close(whole, selection(torch.cat(patches), torch.Generator().manual_seed(0)))
    per_patch_count = patches[0].shape[0]  # one batch's patches: every batch becomes a chunk of its own
    chunked, _ = fitted_bank(per_patch_count)
    starts = torch.Generator().manual_seed(0)
    torch.testing.assert_close(chunked, torch.cat([selection(part, starts) for part in patches]))
    assert chunked.shape[0] == 3 * math.ceil(0.05 * per_patch_count)


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_other_backbones_work_end_to_end(method, shared_weights):
    model = create_model(method, backbone="mobilenet_v2",
                         weights=str(shared_weights / "mobilenet_v2_imagenet_coral_int8.pth"), crop=64, resize=72,
                         resize_mode="center_crop")
    model.fit(random_images(24, 80))
    assert model.preprocessing.normalization == "inception"
    assert model.predict(random_images(2, 80, seed=9)).raw_maps.shape == (2, 64, 64)


def test_evaluate_json_friendly(fitted, demo_dataset):
    model, _, _ = fitted
    evaluation = evaluate(model, demo_dataset, timing_repeats=0)
    json.dumps(evaluation.metrics)
    assert "predict_ms_per_image" not in evaluation.metrics
