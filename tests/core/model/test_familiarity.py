"""The "unlike the training data" check every model gets: the nearest-neighbour distance, the split-conformal line
that never lies closer than a same-kind distance, its place in the model file, and what it says of the model's own
test images and of pictures of something else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from inspection.model.familiarity import (
    BANK_TENSOR,
    INFO_KEY,
    SAME_KIND_DISTANCE,
    Familiarity,
    nearest_distance,
)
from inspection.model.modelfile import read_model_file, write_model_file
from inspection.registry import load_model


def test_nearest_distance_is_the_cosine_distance_to_the_closest_bank_vector():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    vectors = F.normalize(torch.tensor([[1.0, 0.1], [-1.0, 0.0]]), dim=1)
    expected = 1 - (vectors @ bank.T).max(dim=1).values
    assert np.allclose(nearest_distance(vectors, bank), expected.numpy(), atol=1e-6)
    # Each bank vector against the others: [1, 0] is 45° from [1, 1], not 0 from itself.
    alone = nearest_distance(bank, bank, exclude_self=True)
    assert alone[0] == pytest.approx(1 - np.cos(np.pi / 4), abs=1e-6)


def test_the_line_is_split_conformal_and_never_closer_than_the_same_kind_distance():
    near = Familiarity.from_heldout([0.01, 0.02, 0.03])
    assert near.threshold == SAME_KIND_DISTANCE and near.promised_fpr == pytest.approx(0.25)  # 1 / (n + 1)
    spread = np.linspace(0.3, 0.6, 199)
    far = Familiarity.from_heldout(spread, target_fpr=0.01)
    assert far.threshold == pytest.approx(np.sort(spread)[197]) and far.promised_fpr == pytest.approx(0.01)
    assert Familiarity.from_dict(far.to_dict()) == far
    assert list(far.is_unlike([0.1, 0.7])) == [False, True]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory, demo_dataset):
    """A small PatchCore fitted on the demo data, saved and loaded again."""
    from inspection.registry import create_model

    model = create_model("patchcore", resize=128, crop=112, coreset_ratio=0.1)
    model.fit([sample.path for sample in demo_dataset.train])
    path = model.save(tmp_path_factory.mktemp("familiarity") / "demo.safetensors")
    return path, load_model(path)


def test_own_images_are_familiar_and_pictures_of_other_things_are_not(demo_model, demo_dataset):
    path, model = demo_model
    assert model.familiarity is not None and model.familiarity_bank is not None
    assert len(model.familiarity_bank) == model.info.n_fit_images
    own = model.predict([sample.path for sample in demo_dataset.test])
    # The demo's defects are scratches, holes and stains on the same surface: the anomaly score judges them.
    assert own.unlike_training.mean() <= 0.05, own.familiarity_distances
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1)).astype(np.uint8)
    stripes = np.zeros((256, 256, 3), np.uint8)
    stripes[:, ::16] = (255, 0, 0)
    others = model.predict([np.stack([ramp] * 3, axis=-1), stripes, np.full((200, 300, 3), 255, np.uint8)])
    assert others.unlike_training.all(), others.familiarity_distances


def test_files_made_before_the_check_load_and_predict_without_it(demo_model, tmp_path, demo_dataset):
    path, _ = demo_model
    tensors, header = read_model_file(path)
    assert BANK_TENSOR in tensors and INFO_KEY in header["info"]
    del tensors[BANK_TENSOR], header["info"][INFO_KEY]
    older = write_model_file(tmp_path / "older.safetensors", tensors, header)
    model = load_model(older)
    assert model.familiarity is None and model.familiarity_bank is None
    prediction = model.predict([demo_dataset.test[0].path])
    assert prediction.familiarity_distances is None and not prediction.unlike_training.any()


def test_predict_writes_unlike_in_the_csv_and_counts_it_apart(demo_model, demo_dataset, tmp_path, capsys):
    import csv

    from inspection.cli import main

    path, _ = demo_model
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(next(sample.path for sample in demo_dataset.test if sample.label == 1)).save(folder / "part.png")
    Image.fromarray(np.tile(np.linspace(0, 65535, 300), (200, 1)).astype(np.uint16)).save(folder / "gradient.png")
    assert main(["predict", "--model", str(path), "--out", str(tmp_path / "out"), str(folder)]) == 0
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows["gradient.png"]["verdict"] == "unlike" and rows["gradient.png"]["regions"] == "0"
    assert rows["part.png"]["verdict"] == "defect"
    assert "1 unlike the training data" in capsys.readouterr().out


def test_evaluate_says_how_often_the_models_own_test_images_are_called_unlike(fitted):
    model, evaluation, _ = fitted
    metrics = evaluation.metrics
    low, high = metrics["unlike_training_own_test_ci"]
    assert low <= metrics["unlike_training_own_test"] <= high
    # The promise holds within the interval on the demo's own test images, defects included.
    assert low <= metrics["unlike_training_rate"]
    assert metrics["unlike_training_rate"] == pytest.approx(model.familiarity.promised_fpr)
    assert {"unlike_training_own_good", "unlike_training_own_defect"} <= set(metrics)
