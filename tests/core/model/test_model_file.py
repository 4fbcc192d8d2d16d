"""The one-file model format: identical scores after a round trip, metadata read without the weights, atomic
rewrites, files that must be refused, and files of earlier versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, random_images
from inspection.errors import ModelFileError
from inspection.model.modelfile import read_model_info, save_thresholds, update_header, update_info, write_model_file
from inspection.registry import create_model, load_model


def test_save_load_round_trip_gives_identical_scores(fitted, demo_dataset, tmp_path):
    model, _, _ = fitted
    path = model.save(tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
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


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_model_files_of_version_0_1_still_load_and_score_the_same(method, demo_root):
    """Files written by inspection 0.1.0 (before the methods moved to inspection/methods/) load unchanged."""
    expected = json.loads((FIXTURES / "v0.1.0_scores.json").read_text())[method]
    model = load_model(FIXTURES / f"{method}_v0.1.0.safetensors")
    assert model.name == method and model.layers == ""  # 0.1 stored "" for the default layers
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
