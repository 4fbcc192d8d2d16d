"""Patch SVDD: the training pair samplers, the score spreading, the encoders (shapes, and the convolutional embedding
equal to cropping every patch), training, determinism, the coreset option and the one-file round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inspection.methods.patch_svdd import (
    NEIGHBOUR_DIRECTIONS,
    HierarchicalEncoder,
    PatchEncoder,
    PositionClassifier,
    sample_nearby_pairs,
    sample_position_pairs,
    spread_patch_scores,
)
from inspection.model.batching import decode
from inspection.registry import create_model, load_model

DIRECTIONS = torch.tensor(NEIGHBOUR_DIRECTIONS)
# Small and fast: 64×64 working images, few pairs, one or two epochs.
TINY = {"resize": 64, "crop": 64, "epochs": 1, "images_per_step": 4, "pairs_per_image": 16, "min_holdout": 2}

# ---------------------------------------------------------------------------------------------------------
# Pair samplers


@pytest.mark.parametrize("patch, step", [(32, 1), (64, 1), (32, 2), (64, 2)])
def test_position_pairs_lie_in_the_3x3_grid_with_jittered_offsets(patch, step):
    generator = torch.Generator().manual_seed(0)
    size = 1000  # large: few pairs touch a border
    first, second, labels = sample_position_pairs(20000, size, size, patch, generator, step)
    assert sorted(labels.unique().tolist()) == list(range(8))
    assert (first % step == 0).all() and (second % step == 0).all()
    inside = ((first >= patch) & (first <= size - 2 * patch)).all(dim=1)  # no clipping possible here
    offsets, directions = (second - first)[inside], DIRECTIONS[labels[inside]]
    assert torch.equal(offsets.sign(), directions)
    distance = offsets.abs()[directions != 0]
    assert distance.min() == 3 * patch // 4 and distance.max() == patch // 4 // step * step - step + 3 * patch // 4
    assert len(distance.unique()) == patch // 4 // step  # every jitter value occurs
    assert (offsets[directions == 0] == 0).all()


def test_position_pairs_near_a_border_are_clipped_into_the_image():
    generator = torch.Generator().manual_seed(1)
    patch, height, width = 32, 48, 80
    first, second, labels = sample_position_pairs(5000, height, width, patch, generator)
    limit = torch.tensor([height - patch, width - patch])
    for corners in (first, second):
        assert (corners >= 0).all() and (corners <= limit).all()
    # Each axis of the second patch is the first's plus its offset (3K/4 … K−1 in the label's direction), clamped.
    directions = DIRECTIONS[labels]
    near = (first + directions * (3 * patch // 4)).clamp_min(0).minimum(limit)
    far = (first + directions * (patch - 1)).clamp_min(0).minimum(limit)
    assert ((second >= near.minimum(far)) & (second <= near.maximum(far))).all()
    clipped = (second == 0) | (second == limit)
    assert clipped[directions != 0].float().mean() > 0.5  # in so small an image, most are pushed back inside


def test_nearby_pairs_are_shifted_a_little_never_not_at_all():
    generator = torch.Generator().manual_seed(2)
    for patch, step, reach in ((32, 1, 1), (64, 1, 2), (32, 2, 2), (64, 2, 2)):
        first, second = sample_nearby_pairs(5000, 500, 500, patch, generator, step)
        shift = second - first
        assert shift.abs().max() == reach and (shift % step == 0).all()
        inside = ((first >= reach) & (first <= 500 - patch - reach)).all(dim=1)
        assert (shift[inside].abs().sum(dim=1) > 0).all()
    first, second = sample_nearby_pairs(1000, 33, 33, 32, generator)  # two positions per axis: clipped
    assert ((second >= 0) & (second <= 1)).all()


def test_samplers_are_seeded():
    pairs = [sample_position_pairs(50, 100, 100, 32, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*pairs))
    with pytest.raises(ValueError, match="does not fit"):
        sample_nearby_pairs(1, 60, 100, 64, torch.Generator())


# ---------------------------------------------------------------------------------------------------------
# Score spreading


def test_score_spreading_is_the_mean_over_covering_patches_on_a_hand_case():
    # 2×2 patches of side 2 at stride 1 on a 3×3 image: corners see one patch, edges two, the centre all four.
    scores = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    expected = torch.tensor([[[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]]])
    assert torch.equal(spread_patch_scores(scores, 2, 1, (3, 3)), expected)
    # A 4×4 image: the last row and column are covered by no patch and take the nearest value.
    padded = spread_patch_scores(scores, 2, 1, (4, 4))
    assert torch.equal(padded[:, :3, :3], expected)
    assert torch.equal(padded[0, 3], torch.tensor([3.0, 3.5, 4.0, 4.0]))


def test_score_spreading_matches_a_loop_over_patches():
    scores = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    patch, stride = 4, 2
    total, count = torch.zeros(2, 12, 10, dtype=torch.float64), torch.zeros(12, 10, dtype=torch.float64)
    for i in range(5):
        for j in range(4):
            total[:, i * stride: i * stride + patch, j * stride: j * stride + patch] += scores[:, i, j, None, None]
            count[i * stride: i * stride + patch, j * stride: j * stride + patch] += 1
    torch.testing.assert_close(spread_patch_scores(scores, patch, stride, (12, 10)), total / count)


# ---------------------------------------------------------------------------------------------------------
# Encoders


def test_encoder_output_shapes():
    torch.manual_seed(0)
    encoder = HierarchicalEncoder(64)
    with torch.no_grad():
        assert encoder.inner(torch.randn(3, 3, 32, 32)).shape == (3, 64, 1, 1)
        assert encoder(torch.randn(3, 3, 64, 64)).shape == (3, 64, 1, 1)
        small, large = encoder.embed_for_scoring(torch.randn(2, 3, 96, 128))
    assert small.shape == (2, 64, (96 - 32) // 4 + 1, (128 - 32) // 4 + 1)
    assert large.shape == (2, 64, (96 - 64) // 16 + 1, (128 - 64) // 16 + 1)
    assert small.abs().max() <= 1 and large.abs().max() <= 1  # tanh outputs
    assert len(PatchEncoder(16).convs) == 8 and PatchEncoder(16)(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 1, 1)
    assert PositionClassifier(64)(torch.zeros(5, 64), torch.zeros(5, 64)).shape == (5, 8)


def _crop_and_stack(encoder: HierarchicalEncoder, patches: torch.Tensor) -> torch.Tensor:
    """The seed's EncoderHier forward: encode the four 32×32 sub-patches apart, put them 2×2, combine."""
    quarters = [patches[..., :32, :32], patches[..., :32, 32:], patches[..., 32:, :32], patches[..., 32:, 32:]]
    top_left, top_right, bottom_left, bottom_right = (encoder.inner(quarter) for quarter in quarters)
    grid = torch.cat([torch.cat([top_left, top_right], 3), torch.cat([bottom_left, bottom_right], 3)], 2)
    hidden = F.leaky_relu(encoder.combine(grid), 0.1)
    return torch.tanh(encoder.project(hidden))


def test_whole_image_embedding_equals_encoding_every_cropped_patch():
    torch.manual_seed(1)
    encoder = HierarchicalEncoder(8)
    image = torch.randn(1, 3, 112, 96)
    with torch.no_grad():
        small, large = encoder.embed_for_scoring(image)
        for i, j in ((0, 0), (3, 5), (small.shape[2] - 1, small.shape[3] - 1)):
            crop = image[..., 4 * i: 4 * i + 32, 4 * j: 4 * j + 32]
            torch.testing.assert_close(small[..., i, j], encoder.inner(crop)[..., 0, 0])
        for i, j in ((0, 0), (1, 2), (large.shape[2] - 1, large.shape[3] - 1)):
            crop = image[..., 16 * i: 16 * i + 64, 16 * j: 16 * j + 64]
            torch.testing.assert_close(large[..., i, j], _crop_and_stack(encoder, crop)[..., 0, 0])


# ---------------------------------------------------------------------------------------------------------
# The method


def test_parameters_are_declared_and_checked():
    model = create_model("patch_svdd")
    assert model.combine == "product" and model.embedding_dim == 64
    assert not model.coreset and model.capabilities.trains_by_gradient
    help_text = model.param_set().get("lambda_svdd").help
    assert "objects" in help_text and "textures" in help_text
    with pytest.raises(ValueError, match="at least 64"):
        create_model("patch_svdd", resize=48, crop=48)
    with pytest.raises(ValueError, match="train_crop"):
        create_model("patch_svdd", train_crop=32)
    with pytest.raises(ValueError, match="one of"):
        create_model("patch_svdd", combine="max")


def test_a_few_training_steps_lower_the_loss_on_the_demo_data(demo_dataset):
    model = create_model("patch_svdd", **{**TINY, "resize": 80, "crop": 80, "pairs_per_image": 64})
    model._ensure_setup()
    images = model.preprocessing.batch([decode(sample.path) for sample in demo_dataset.train[:8]])[0]
    model.patch_encoder = model._new_encoder()
    classifiers = torch.nn.ModuleDict({"32": PositionClassifier(64), "64": PositionClassifier(64)})

    def fixed_loss() -> float:  # the same pairs and perturbations every time
        with torch.no_grad():
            return model.training_loss(images, classifiers, torch.Generator().manual_seed(9)).item()

    before = fixed_loss()
    assert before == pytest.approx(2 * math.log(8), abs=0.3)  # two 8-way classifications at chance
    parameters = list(model.patch_encoder.parameters()) + list(classifiers.parameters())
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):
        loss = model.training_loss(images, classifiers, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < before - 0.3


@pytest.fixture(scope="module")
def fitted(demo_dataset):
    model = create_model("patch_svdd", **TINY)
    reports = []
    model.fit([sample.path for sample in demo_dataset.train[:10]], progress=reports.append)
    return model, reports


def test_fit_reports_the_loss_per_epoch(fitted):
    model, reports = fitted
    epochs = [report for report in reports if report.stage == "epoch"]
    assert [(r.step, r.total) for r in epochs] == [(1, 1)] and np.isfinite(epochs[0].loss)
    assert {"memory", "calibrate"} <= {report.stage for report in reports}
    assert set(model.capabilities.stages) >= {"epoch", "memory", "coreset"}
    # 8 fit images: K = 32 patches at stride 4 (9×9 per image) and K = 64 patches at stride 16 (1 per image).
    assert model.memory_small.shape == (8 * 81, 64) and model.memory_large.shape == (8, 64)


def test_same_seed_same_scores_other_seed_other_scores(fitted, demo_dataset):
    model, _ = fitted
    images = [sample.path for sample in demo_dataset.test[::12]]
    again = create_model("patch_svdd", **TINY).fit([sample.path for sample in demo_dataset.train[:10]])
    assert np.array_equal(model.predict(images).raw_scores, again.predict(images).raw_scores)
    other = create_model("patch_svdd", **TINY, seed=1).fit([sample.path for sample in demo_dataset.train[:10]])
    assert not np.array_equal(model.predict(images).raw_scores, other.predict(images).raw_scores)


def test_save_load_round_trip_gives_identical_scores_and_maps(fitted, demo_dataset, tmp_path):
    model, _ = fitted
    loaded = load_model(model.save(tmp_path / "svdd.safetensors"))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    images = [sample.path for sample in demo_dataset.test[::7]]
    before, after = model.predict(images), loaded.predict(images)
    assert np.array_equal(before.raw_scores, after.raw_scores) and np.array_equal(before.raw_maps, after.raw_maps)
    assert before.raw_maps.shape == (len(images), 64, 64)
    # The image score is the map's maximum; the map is the product of the two scales' maps.
    np.testing.assert_allclose(before.raw_scores, before.raw_maps.reshape(len(images), -1).max(1), rtol=1e-6)


def test_the_scales_combine_by_product_or_sum(fitted, demo_dataset):
    model, _ = fitted
    images = model.preprocessing.batch([decode(sample.path) for sample in demo_dataset.test[:2]])[0]
    with torch.no_grad():
        scores = model.patch_scores(images)
        small = spread_patch_scores(scores[32], 32, 4, (64, 64))
        large = spread_patch_scores(scores[64], 64, 16, (64, 64))
        product, _ = model._score(images)
        model.set_params(combine="sum")
        try:
            total, _ = model._score(images)
        finally:
            model.set_params(combine="product")
    torch.testing.assert_close(product, small * large)
    torch.testing.assert_close(total, small + large)


def test_the_coreset_option_keeps_the_asked_share_of_each_memory(demo_dataset, tmp_path):
    model = create_model("patch_svdd", **TINY, coreset=True, coreset_ratio=0.1)
    reports = []
    model.fit([sample.path for sample in demo_dataset.train[:10]], progress=reports.append)
    assert model.memory_small.shape == (math.ceil(0.1 * 8 * 81), 64) and model.memory_large.shape == (1, 64)
    assert "coreset" in {report.stage for report in reports}
    loaded = load_model(model.save(tmp_path / "coreset.safetensors"))
    images = [sample.path for sample in demo_dataset.test[:3]]
    assert np.array_equal(model.predict(images).raw_scores, loaded.predict(images).raw_scores)


def test_a_file_with_a_wrong_memory_is_refused(fitted, tmp_path):
    from inspection.errors import ModelFileError
    from inspection.model.modelfile import read_model_file, write_model_file

    model, _ = fitted
    path = model.save(tmp_path / "svdd.safetensors")
    tensors, header = read_model_file(path)
    tensors["memory_small"] = tensors["memory_small"][:, :10].contiguous()
    write_model_file(tmp_path / "bad.safetensors", tensors, header)
    with pytest.raises(ModelFileError, match="memory_small"):
        load_model(tmp_path / "bad.safetensors")
