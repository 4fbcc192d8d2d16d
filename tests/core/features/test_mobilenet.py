"""MobileNet V1: the architecture against the paper's parameter and mult-add table, exact counting, registration as
backbones of every feature method, and weights (none ship; a user's file loads)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import inspection.features
from inspection.errors import WeightsNotFoundError
from inspection.features.backbones import BACKBONES, get_backbone_spec
from inspection.features.cost import backbone_cost, count_cost
from inspection.features.mobilenet import DepthwiseSeparable, mobilenet_v1
from inspection.features.weights import build_backbone
from inspection.registry import create_model

# The paper's Table 6 (width multiplier α at 224) and Table 7 (input side at α = 1): million mult-adds and
# million parameters, as printed (parameters to 0.1 M).
PAPER_WIDTHS = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}
PAPER_RESOLUTIONS = {224: 569, 192: 418, 160: 290, 128: 186}


def test_called_with_no_arguments_it_is_the_full_untrained_classifier():
    model = mobilenet_v1()
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 1000
    assert model.width_mult == 1.0 and model.resolution == 224
    depthwise = [m for m in model.modules() if isinstance(m, DepthwiseSeparable)]
    assert len(depthwise) == 13  # stem + 13 depthwise-separable blocks, as in the paper's Table 1
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_alpha_1_at_224_has_4_2_million_parameters_and_569_million_mult_adds():
    parameters, mult_adds = count_cost(mobilenet_v1(), 224)
    assert abs(parameters - 4.2e6) <= 0.1e6
    assert mult_adds == pytest.approx(569e6, rel=0.005)


@pytest.mark.parametrize("width", sorted(PAPER_WIDTHS))
def test_the_width_multiplier_scales_cost_and_parameters_as_the_paper_says(width):
    paper_mult_adds, paper_parameters = PAPER_WIDTHS[width]
    parameters, mult_adds = count_cost(mobilenet_v1(width_mult=width), 224)
    assert mult_adds / 1e6 == pytest.approx(paper_mult_adds, rel=0.01)
    assert abs(parameters / 1e6 - paper_parameters) <= 0.05 + 1e-9  # the paper rounds to 0.1 M


@pytest.mark.parametrize("side", sorted(PAPER_RESOLUTIONS))
def test_the_resolution_scales_cost_and_leaves_the_parameters(side):
    parameters, mult_adds = count_cost(mobilenet_v1(resolution=side), side)
    assert mult_adds / 1e6 == pytest.approx(PAPER_RESOLUTIONS[side], rel=0.01)
    assert parameters == count_cost(mobilenet_v1(), 224)[0]


def test_mult_adds_are_counted_exactly_on_a_hand_case():
    # A depthwise 3×3 (4 channels, 8×8 output) costs 4·9·64; a 1×1 4→6 convolution 6·4·64; a linear 6→5, 30.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                          nn.Conv2d(4, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    parameters, mult_adds = count_cost(model, 8)
    assert mult_adds == 4 * 27 * 64 + 4 * 9 * 64 + 6 * 4 * 64 + 6 * 5
    assert parameters == 4 * 27 + (4 * 9 + 4) + (6 * 4 + 6) + (6 * 5 + 5)


def test_no_other_callable_in_the_backbones_is_named_mobilenet_v1():
    found = {}
    for info in pkgutil.iter_modules(inspection.features.__path__):
        module = importlib.import_module(f"inspection.features.{info.name}")
        for name, value in vars(module).items():
            if callable(value) and not isinstance(value, type(importlib)) and "mobilenet_v1" in name.lower():
                found.setdefault(id(value), set()).add(name)
    assert list(found.values()) == [{"mobilenet_v1"}]


def test_registered_for_every_width_with_layers_by_stride():
    for name, width in (("mobilenet_v1", 1.0), ("mobilenet_v1_075", 0.75), ("mobilenet_v1_050", 0.5),
                        ("mobilenet_v1_025", 0.25)):
        spec = get_backbone_spec(name)
        assert spec.resolve_layers("4,8,16,32") == ("features.3", "features.5", "features.11", "features.13")
        assert spec.layers["features.11"].channels == int(512 * width)
        assert spec.default_normalization == "inception"
    assert create_model("patchcore", backbone="mobilenet_v1_050").layer_names == ("features.5", "features.11")
    assert create_model("padim", backbone="mobilenet_v1").layer_names == ("features.3", "features.5", "features.11")


def test_any_input_side_works():
    model = mobilenet_v1(width_mult=0.25).eval()
    with torch.no_grad():
        for side in (128, 160, 100):
            assert model(torch.zeros(1, 3, side, side)).shape == (1, 1000)


def test_no_weights_is_a_clear_error_that_says_none_ship(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("INSPECTION_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as error:
        build_backbone("mobilenet_v1_050")
    message = str(error.value)
    assert "No ImageNet weights of MobileNet V1 ship" in message and "mobilenet_v1_0.50.pth" in message
    assert "mobilenet_v2" in message and "efficientnet_lite" in message and "--weights" in message


def test_a_weights_file_of_yours_loads_from_the_weights_dir(tmp_path, monkeypatch):
    reference = build_backbone("mobilenet_v1_025", "random", seed=4)[0]
    torch.save(reference.state_dict(), tmp_path / "mobilenet_v1_0.25.pth")
    monkeypatch.setenv("INSPECTION_WEIGHTS_DIR", str(tmp_path))
    model, weights = build_backbone("mobilenet_v1_025")
    assert weights.source == str(tmp_path / "mobilenet_v1_0.25.pth") and weights.normalization == "inception"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_the_cost_function_covers_every_backbone_and_times_it():
    assert set(BACKBONES) >= {"mobilenet_v1", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025"}
    cost = backbone_cost("mobilenet_v1_025", 128, repeats=2)
    assert cost.parameters == count_cost(mobilenet_v1(width_mult=0.25), 128)[0]
    assert cost.mult_adds / 1e6 == pytest.approx(13.6, abs=0.1) and cost.ms_per_image > 0
    lite = backbone_cost("efficientnet_lite0", 224, measure=False)
    assert lite.ms_per_image is None and 4.5e6 < lite.parameters < 4.8e6
