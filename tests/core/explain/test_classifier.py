"""The optional defect classifier head and its CAM (`inspection.explain.classifier`): fitted on labelled images
where the answer is known it points at the defect and tells good from defect; it lives in the model file without
touching anything else; the CLI and the Inspect page fit and show it; models without a backbone say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import RED, SIZE, peak_near, texture

from app_testing import assert_clean, copy_model, run_page, train_small_model
from inspection.cli import main
from inspection.errors import NotExplainableError, ParameterError
from inspection.explain.classifier import (
    attach_defect_classifier,
    class_activation_map,
    defect_classifier,
    fit_defect_classifier,
    unavailable_reason,
)
from inspection.model.modelfile import read_model_file
from inspection.registry import create_model, load_model


def with_square(seed: int, top: int, left: int, side: int = 16) -> np.ndarray:
    """A good surface with a red square: the kind of defect the classifier is shown."""
    image = texture(seed).copy()
    image[top: top + side, left: left + side] = (250, 30, 30)
    return image


def labelled(count: int = 10) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(7)
    good = [texture(200 + index) for index in range(count)]
    defect = [with_square(300 + index, *rng.integers(4, SIZE - 20, size=2)) for index in range(count)]
    return good, defect


@pytest.fixture(scope="module")
def fitted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PatchCore fitted on good stripes (EfficientNet-Lite0's ImageNet weights), saved, with its head attached."""
    model = create_model("patchcore", resize=SIZE, crop=SIZE).fit([texture(seed) for seed in range(20)])
    path = model.save(tmp_path_factory.mktemp("models") / "stripes.safetensors")
    good, defect = labelled()
    attach_defect_classifier(path, fit_defect_classifier(model, good, defect))
    return path


def test_the_cam_points_at_the_defect_and_the_head_tells_good_from_defect(fitted_file: Path) -> None:
    model = load_model(fitted_file)
    head = defect_classifier(model)
    assert head is not None and head.layer == model.layer_names[-1]
    assert head.record["n_good"] == head.record["n_defect"] == 10 and head.record["cv_accuracy"] >= 0.9
    found = class_activation_map(model, with_square(999, RED[0].start, RED[1].start))
    assert found.probability > 0.5 and found.cam.shape == (SIZE, SIZE)
    assert found.cam.min() >= 0 and found.cam.max() == pytest.approx(1.0)
    assert peak_near(found.cam, RED), np.unravel_index(found.cam.argmax(), found.cam.shape)
    assert class_activation_map(model, texture(998)).probability < 0.5


def test_the_head_lives_in_the_model_file_and_changes_nothing_else(fitted_file: Path, tmp_path: Path) -> None:
    tensors, header = read_model_file(fitted_file)
    assert {"classifier.weight", "classifier.bias"} <= set(tensors) and "defect_classifier" in header["info"]
    model = load_model(fitted_file)
    plain = create_model("patchcore", resize=SIZE, crop=SIZE).fit([texture(seed) for seed in range(20)])
    image = with_square(5, 40, 40)
    # The method's own state and its scores are those of the same fit without a head.
    assert torch.equal(model.memory_bank, plain.memory_bank)
    np.testing.assert_array_equal(model.predict([image]).raw_maps, plain.predict([image]).raw_maps)
    # Saved again, the head goes with it; fitted again, it is dropped (it was fitted on the old features).
    again = load_model(model.save(tmp_path / "again"))
    assert torch.equal(defect_classifier(again).weight, defect_classifier(model).weight)
    model.fit([texture(seed) for seed in range(20)])
    assert defect_classifier(model) is None and "defect_classifier" not in model.info
    assert "classifier.weight" not in read_model_file(model.save(tmp_path / "refit"))[0]


def test_refusals_say_what_to_do(fitted_file: Path) -> None:
    vae = create_model("vae")
    assert unavailable_reason(vae) == f"A defect classifier sits on a pretrained backbone; {vae.label} has none."
    with pytest.raises(NotExplainableError, match="has none"):
        fit_defect_classifier(vae, [], [])
    plain = create_model("patchcore", resize=SIZE, crop=SIZE).fit([texture(seed) for seed in range(12)])
    with pytest.raises(NotExplainableError, match="python -m inspection classifier"):
        class_activation_map(plain, texture(1))
    good, defect = labelled(2)
    with pytest.raises(ParameterError, match="at least 3 good and 3 defect images"):
        fit_defect_classifier(plain, good, defect)
    with pytest.raises(ParameterError, match="not one of the model's layers"):
        fit_defect_classifier(plain, *labelled(3), layer="blocks.9")


def test_the_command_line_fits_the_head_and_draws_its_cam(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = create_model("patchcore", resize=SIZE, crop=SIZE).fit([texture(seed) for seed in range(12)])
    path = model.save(tmp_path / "model")
    good, defect = labelled(6)
    for kind, images in (("good", good), ("defect", defect)):
        (tmp_path / kind).mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / kind / f"{index}.png")
    # The good images given as a file:// URI folder: the command reads URIs as `predict` does.
    assert main(["classifier", "--model", str(path), "--good", (tmp_path / "good").as_uri(), "--defect",
                 str(tmp_path / "defect")]) == 0
    assert "6 good and 6 defect images, cross-validated accuracy" in capsys.readouterr().out
    out = tmp_path / "cam.png"
    assert main(["explain", "--cam", "--model", str(path), str(tmp_path / "defect" / "0.png"), "--out",
                 str(out)]) == 0
    assert "class activation map of the defect classifier" in capsys.readouterr().out
    assert Image.open(out).size == (SIZE, SIZE)
    assert main(["explain", "--cam", "--guided", "--model", str(path), str(tmp_path / "defect" / "0.png"), "--out",
                 str(out)]) == 2
    assert "--guided and --layer do not apply" in capsys.readouterr().err


def test_the_inspect_page_fits_the_head_on_the_test_images_and_shows_its_cam(models: Path, demo_root: Path,
                                                                            tmp_path: Path) -> None:
    model_path = copy_model(train_small_model(demo_root, tmp_path / "small.safetensors"), models)
    at = run_page("app_pages/4_Inspect.py", inspect_type="hole")
    assert_clean(at)
    assert "Defect classifier (CAM)" in [header.value for header in at.subheader]
    assert any("python -m inspection classifier" in caption.value for caption in at.caption)
    next(button for button in at.button if button.key == "inspect_fit_classifier").click().run()
    assert_clean(at)
    assert defect_classifier(load_model(model_path)) is not None
    shown = len(at.image)
    at.toggle(key="inspect_cam").set_value(True).run()
    assert_clean(at)
    assert len(at.image) == shown + 2  # the anomaly map beside the CAM
    assert any(caption.startswith("Defect probability") for image in at.image for caption in image.captions)
