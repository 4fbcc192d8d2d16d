"""Methods end to end on the demo data, the shared pieces they stand on, and the one-file model format."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_images
from inspection.errors import ModelFileError
from inspection.evaluate import evaluate
from inspection.model.backbone_model import BackboneModel
from inspection.model.base import AnomalyModel
from inspection.model.batching import split_holdout
from inspection.model.modelfile import read_model_info, save_thresholds, update_header, update_info, write_model_file
from inspection.model.progress import Progress
from inspection.ops.coreset import greedy_coreset, random_projection
from inspection.ops.knn import nearest_neighbors
from inspection.pipeline import fit_on_dataset
from inspection.registry import create_model, get_method, load_model, methods
from inspection.scores.regions import count_regions

# ---------------------------------------------------------------------------------------------------------
# Shared pieces


def test_chunked_nearest_neighbours_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    reference = torch.cdist(queries.double(), bank.double())
    expected_d, expected_i = reference.topk(3, dim=1, largest=False)
    # A tiny block limit forces many query and bank chunks.
    distances, indices = nearest_neighbors(queries, bank, k=3, max_elements=4096)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances.double(), expected_d, atol=1e-4, rtol=1e-4)


def naive_greedy_coreset(points: np.ndarray, n_select: int, start: int) -> list[int]:
    """Reference: textbook greedy k-center with explicit loops and exact distances."""
    selected = [start]
    while len(selected) < n_select:
        best_index, best_distance = -1, -1.0
        for index in range(len(points)):
            nearest = min(float(np.sum((points[index] - points[chosen]) ** 2)) for chosen in selected)
            if nearest > best_distance:
                best_index, best_distance = index, nearest
        selected.append(best_index)
    return selected


@pytest.mark.parametrize("block", [512, 1, 7, 32])  # one block (the plain greedy), and lazy blocks, ragged too
def test_greedy_coreset_matches_the_naive_reference(block):
    points = np.random.default_rng(0).normal(size=(120, 5))
    selected = greedy_coreset(torch.from_numpy(points), 15, start_index=7, block=block)
    assert selected.tolist() == naive_greedy_coreset(points, 15, 7)


def test_lazy_blocks_choose_what_one_pass_per_step_chooses_on_clustered_points():
    # Clusters make most blocks stale for long stretches: the case the laziness skips work in.
    rng = np.random.default_rng(1)
    points = torch.from_numpy(np.concatenate([rng.normal(loc, 0.3, size=(400, 8)) for loc in range(-5, 6)]))
    plain = greedy_coreset(points, 60, start_index=3, block=len(points))
    assert greedy_coreset(points, 60, start_index=3, block=16).tolist() == plain.tolist()


def test_greedy_coreset_covers_every_cluster_where_random_sampling_would_not():
    rng = np.random.default_rng(1)
    # One big cluster and five tiny far-away ones: 6 greedy picks must hit all six clusters.
    centres = np.array([[0, 0], [50, 0], [0, 50], [-50, 0], [0, -50], [50, 50]], float)
    sizes = [995, 1, 1, 1, 1, 1]
    points = np.concatenate([centre + rng.normal(scale=0.5, size=(size, 2)) for centre, size in zip(centres, sizes)])
    labels = np.repeat(np.arange(6), sizes)
    selected = greedy_coreset(torch.from_numpy(points), 6, start_index=0)
    assert sorted(labels[selected.numpy()].tolist()) == [0, 1, 2, 3, 4, 5]


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


def test_random_projection_is_seeded_and_keeps_distances_roughly():
    features = torch.randn(50, 256, generator=torch.Generator().manual_seed(0))
    first, second = random_projection(features, 64, seed=3), random_projection(features, 64, seed=3)
    assert torch.equal(first, second) and first.shape == (50, 64)
    ratio = torch.pdist(first) / torch.pdist(features)
    assert 0.6 < ratio.mean().item() < 1.4


def test_holdout_split_is_seeded_and_sized():
    fit, held = split_holdout(209, 0.1, 10, seed=0)
    assert len(held) == 21 and len(fit) == 188 and not set(fit) & set(held)
    assert np.array_equal(split_holdout(209, 0.1, 10, seed=0)[1], held)
    assert len(split_holdout(30, 0.1, 10, seed=0)[1]) == 10
    assert len(split_holdout(12, 0.1, 10, seed=0)[1]) == 4  # never more than a third
    assert len(split_holdout(50, 0.0, 10, seed=0)[1]) == 0


# ---------------------------------------------------------------------------------------------------------
# Registry and parameters


def test_registry_lists_the_methods_with_declared_parameters():
    assert {"patchcore", "padim", "dfr", "vae", "anogan", "patch_svdd"} <= set(methods())
    for method_cls in methods().values():
        names = method_cls.param_set().names()
        assert {"seed", "image_fpr", "pixel_fpr", "resize_mode"} <= set(names)
        # Methods on pretrained features declare a backbone; those that learn from scratch have none.
        assert ("backbone" in names) == issubclass(method_cls, BackboneModel)
        assert all(param.help for param in method_cls.param_set())


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="unknown parameter"):
        create_model("patchcore", coreset_size=3)
    with pytest.raises(ValueError, match="coreset_ratio"):
        create_model("patchcore", coreset_ratio=2.0)
    with pytest.raises(ValueError, match="image_fpr"):
        create_model("padim", image_fpr=0.0)
    with pytest.raises(ValueError, match="one of"):
        create_model("padim", backbone="alexnet")
    with pytest.raises(ValueError, match="unknown method"):
        get_method("autoencoder9000")
    assert create_model("patchcore", coreset_ratio="0.05").params["coreset_ratio"] == 0.05


# ---------------------------------------------------------------------------------------------------------
# End to end on the demo dataset (real EfficientNet-Lite0 weights)


@pytest.fixture(scope="module", params=["patchcore", "padim"])
def fitted(request, demo_dataset):
    model = create_model(request.param)
    reports: list[Progress] = []
    evaluation = fit_on_dataset(model, demo_dataset, progress=reports.append)
    return model, evaluation, reports


def test_fit_reports_progress_and_calibrates_on_held_out_images(fitted, demo_dataset):
    model, _, reports = fitted
    assert {"features", "calibrate"} <= {report.stage for report in reports}
    n_train = len(demo_dataset.train)
    assert model.info["n_heldout_images"] == max(10, math.ceil(0.1 * n_train))
    assert model.info["n_fit_images"] + model.info["n_heldout_images"] == n_train
    calibration = model.calibration
    assert len(calibration.heldout_scores) == model.info["n_heldout_images"]
    assert calibration.heldout_fpr() <= model.params["image_fpr"]
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
    assert abs(model.calibration.heldout_pixel_fpr() - model.params["pixel_fpr"]) < 0.01


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


def test_save_load_round_trip_gives_identical_scores(fitted, demo_dataset, tmp_path):
    model, _, _ = fitted
    path = model.save(tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.params == model.params
    assert loaded.preprocessing == model.preprocessing
    images = [sample.path for sample in demo_dataset.test[::7]]
    before, after = model.predict(images), loaded.predict(images)
    assert np.array_equal(before.raw_scores, after.raw_scores)
    assert np.array_equal(before.raw_maps, after.raw_maps)
    assert loaded.calibration == model.calibration
    assert loaded.info["metrics"]["image_auroc"] == model.info["metrics"]["image_auroc"]
    header = read_model_info(path)
    assert header["seed"] == 0 and header["backbone"]["name"] == "efficientnet_lite0"
    assert header["info"]["category"] == "surface" and len(header["info"]["test_scores"]) == 50
    assert header["preprocessing"]["normalization"] == "inception"


def test_reading_the_metadata_does_not_load_the_weights(fitted, tmp_path, monkeypatch):
    model, _, _ = fitted
    path = model.save(tmp_path / "model.safetensors")

    def forbidden(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("inspection.model.modelfile.load_file", forbidden)
    assert read_model_info(path)["method"] == model.name


def test_saving_thresholds_rewrites_the_file_atomically(fitted, tmp_path):
    model, _, _ = fitted
    path = model.save(tmp_path / "model.safetensors")
    save_thresholds(path, image_threshold=123.5)
    assert read_model_info(path)["calibration"]["image_threshold"] == 123.5
    assert load_model(path).calibration.image_threshold == 123.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left
    update_info(path, name="line 3 bottles")
    assert read_model_info(path)["info"]["name"] == "line 3 bottles"
    with pytest.raises(ValueError, match="finite"):
        save_thresholds(path, pixel_threshold=float("nan"))


def test_an_interrupted_save_leaves_nothing_half_written(fitted, tmp_path, monkeypatch):
    model, _, _ = fitted

    def interrupted(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("inspection.model.modelfile.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


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
    model.params["image_score"] = "map"
    by_map = model.predict(test)
    np.testing.assert_allclose(by_map.raw_scores, by_map.raw_maps.reshape(len(test), -1).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(by_map.raw_maps, by_patch.raw_maps)
    # Bilinear upsampling and a normalised blur never exceed the largest patch score, and here they lower it.
    assert (by_map.raw_scores < by_patch.raw_scores).all()


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_other_backbones_work_end_to_end(method, shared_weights):
    model = create_model(method, backbone="mobilenet_v2",
                         weights=str(shared_weights / "mobilenet_v2_imagenet_coral_int8.pth"), crop=64, resize=72,
                         resize_mode="center_crop")
    model.fit(random_images(24, 80))
    assert model.preprocessing.normalization == "inception"
    assert model.predict(random_images(2, 80, seed=9)).raw_maps.shape == (2, 64, 64)


# ---------------------------------------------------------------------------------------------------------
# Model files that must be refused


def test_loading_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a model file"):
        load_model(text)


def test_loading_refuses_another_format_version(tmp_path):
    path = write_model_file(tmp_path / "future.safetensors", {"x": torch.zeros(1)}, {"method": "patchcore"})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'\\"format_version\\": 1', b'\\"format_version\\": 9'))
    with pytest.raises(ModelFileError, match="version 9"):
        load_model(path)


@pytest.fixture
def small_model_file(tmp_path) -> Path:
    """A tiny PatchCore on random backbone weights, saved."""
    model = create_model("patchcore", weights="random", crop=64, resize=64, coreset_ratio=0.1)
    model.fit(random_images(15, 64))
    return model.save(tmp_path / "model.safetensors")


def test_loading_refuses_a_model_made_with_other_backbone_weights(small_model_file):
    path = small_model_file
    assert read_model_info(path)["backbone"]["weights"]["fingerprint"] == "random:0"

    def other_weights(header):
        header["backbone"]["weights"]["fingerprint"] = "sha256:0000"
        return header

    update_header(path, other_weights)
    with pytest.raises(ModelFileError, match="other efficientnet_lite0 weights"):
        load_model(path)


def test_loading_refuses_a_bank_that_does_not_fit_the_backbone(small_model_file):
    path = small_model_file

    def other_layers(header):
        header["params"]["layers"] = "blocks.1,blocks.2"
        return header

    update_header(path, other_layers)
    with pytest.raises(ModelFileError, match="does not fit backbone"):
        load_model(path)


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        create_model("padim").predict(random_images(1))


def test_evaluate_json_friendly(fitted, demo_dataset):
    model, _, _ = fitted
    evaluation = evaluate(model, demo_dataset, timing_repeats=0)
    json.dumps(evaluation.metrics)
    assert "predict_ms_per_image" not in evaluation.metrics


def test_anomaly_model_is_abstract():
    with pytest.raises(TypeError):
        AnomalyModel()


# ---------------------------------------------------------------------------------------------------------
# Files of earlier versions, the typed header, the declarations


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_model_files_of_version_0_1_still_load_and_score_the_same(method, demo_root):
    """Files written by inspection 0.1.0 (before the methods moved to inspection/methods/) load unchanged."""
    expected = json.loads((FIXTURES / "v0.1.0_scores.json").read_text())[method]
    model = load_model(FIXTURES / f"{method}_v0.1.0.safetensors")
    assert model.name == method and model.params["layers"] == ""  # 0.1 stored "" for the default layers
    prediction = model.predict([demo_root / image for image in expected["images"]])
    np.testing.assert_allclose(prediction.raw_scores, expected["raw_scores"], rtol=1e-5)
    np.testing.assert_allclose([m.sum() for m in prediction.raw_maps], expected["map_sums"], rtol=1e-5)


def test_the_typed_header_round_trips_and_names_a_wrong_field(tmp_path):
    from inspection.model.header import ModelHeader
    from inspection.model.modelfile import read_model_header

    path = tmp_path / "model.safetensors"
    shutil.copy(FIXTURES / "patchcore_v0.1.0.safetensors", path)
    header = read_model_header(path)
    assert header.method == "patchcore" and header.backbone.name == "efficientnet_lite0"
    assert ModelHeader.from_dict(header.to_dict()) == header
    assert header.info["category"] == header.info.category == "surface"  # item access of 0.1 scripts

    def damaged(stored):
        stored["calibration"]["image_threshold"] = "high"
        return stored

    update_header(path, damaged)
    with pytest.raises(ModelFileError, match="model.safetensors: field 'calibration.image_threshold'"):
        load_model(path)


def test_declarations_check_odd_values_choices_and_rules_without_building_a_model():
    patchcore = get_method("patchcore")
    with pytest.raises(ValueError, match="'neighbourhood' must be odd"):
        patchcore.param_set().resolve({"neighbourhood": 4})
    assert patchcore.param_set().get("device").choices == ("auto", "cpu", "cuda")
    with pytest.raises(ValueError, match="'resize' .* must be at least 'crop'"):
        patchcore.param_set().resolve({"resize_mode": "center_crop", "resize": 100, "crop": 224})
    with pytest.raises(ValueError, match="no layer"):
        patchcore.param_set().resolve({"layers": "blocks.9"})
    assert create_model("padim", backbone="resnet18").layers == ("layer1", "layer2", "layer3")
    assert create_model("patchcore", backbone="mobilenet_v2").layers == ("features.6", "features.13")
    assert create_model("patchcore", layers="blocks.3,32").layers == ("blocks.3", "blocks.6")


def test_estimator_contract():
    model = create_model("padim", n_features=50)
    assert model.get_params()["n_features"] == 50 and repr(model) == "PaDiM(n_features=50)"
    assert not model.fitted and model.channel_index is None  # nothing learned or chosen before fit


# Settings that make a method's fit take seconds here; a method that needs none is covered with no edit.
QUICK = {"padim": {"n_features": 20}, "patchcore": {"coreset_ratio": 0.05},
         "dfr": {"epochs": 2, "batch_positions": 1024},
         "vae": {"epochs": 2, "hidden_dim": 32, "latent_dim": 8, "width": 8, "projection_steps": 3},
         "anogan": {"epochs": 2, "width": 8, "latent_dim": 16, "z_steps": 3},
         "patch_svdd": {"epochs": 1, "pairs_per_image": 16}}


@pytest.mark.parametrize("method", sorted(methods()))
def test_every_registered_method_keeps_the_contract(method, demo_dataset, tmp_path):
    """Fit on good images → maps at the working resolution and scores; one file; identical after loading."""
    settings = {"resize": 64, "crop": 64, **QUICK.get(method, {})}
    model = create_model(method, **settings)
    assert not model.fitted
    model.fit([sample.path for sample in demo_dataset.train[:24]])
    assert model.fitted and model.calibration is not None
    images = [sample.path for sample in demo_dataset.test[::10]]
    prediction = model.predict(images)
    assert prediction.raw_maps.shape == (len(images), 64, 64) and np.isfinite(prediction.raw_scores).all()
    loaded = load_model(model.save(tmp_path / f"{method}.safetensors"))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    again = loaded.predict(images)
    assert np.array_equal(again.raw_scores, prediction.raw_scores)
    assert (prediction.reconstructions is not None) == model.has_reconstruction
