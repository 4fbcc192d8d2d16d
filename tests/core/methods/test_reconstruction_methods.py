"""DFR, the VAE with energy-based projection and AnoGAN at tiny sizes on the demo data; the training helpers,
the panels (views) every page draws, the bench's variants and the timing at two batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import random_images
from inspection.bench.run import markdown_table, parse_method_spec, parse_settings, run_label
from inspection.data.images import load_image
from inspection.methods.dfr import components_for_variance, resize_pool_matrix
from inspection.model.training import TrainingSet, freeze, train_epochs, warm_restarts
from inspection.model.views import Panel, frame_strip
from inspection.progress import Progress
from inspection.registry import create_model, get_method, load_model
from inspection.results.image import image_result
from inspection.workflows.evaluate import time_prediction

# Sizes at which each method fits in about a second here.
TINY = {
    "dfr": {"crop": 64, "resize": 64, "epochs": 3, "batch_positions": 512},
    "vae": {"crop": 32, "resize": 32, "epochs": 3, "hidden_dim": 32, "latent_dim": 8, "width": 8,
            "projection_steps": 5, "strip_frames": 3},
    "anogan": {"crop": 32, "resize": 32, "epochs": 2, "width": 8, "latent_dim": 16, "z_steps": 20,
               "encoder_epochs": 2},
}


def good_images(demo_dataset, count: int = 20) -> list:
    return [sample.path for sample in demo_dataset.train[:count]]


def sample_images(demo_dataset) -> list:
    """A good image and the most obvious hole and scratch."""
    by_type = {sample.defect_type: sample.path for sample in reversed(demo_dataset.test)}
    return [by_type["good"], by_type["hole"], by_type["scratch"]]


@pytest.fixture(scope="module")
def fitted(request, demo_dataset):
    """One tiny fitted model per (method, extra settings), with the progress it reported."""
    cache: dict = {}

    def fit(method: str, **extra):
        key = (method, tuple(sorted(extra.items())))
        if key not in cache:
            reports: list[Progress] = []
            model = create_model(method, **{**TINY[method], **extra})
            model.fit(good_images(demo_dataset), progress=reports.append)
            cache[key] = model, reports
        return cache[key]

    return fit


def losses_of(reports: list[Progress], stage: str = "epoch") -> list[float]:
    return [report.loss for report in reports if report.stage == stage and report.loss is not None]


# ---------------------------------------------------------------------------------------------------------
# Every new method: shapes, one reconstruction per image, panels, save/load, no gradient left on the weights


@pytest.mark.parametrize("method,extra", [("dfr", {}), ("vae", {"scoring": "projection"}),
                                          ("vae", {"scoring": "residual"}), ("anogan", {"scoring": "optimize"}),
                                          ("anogan", {"scoring": "encoder"})])
def test_shapes_reconstructions_panels_and_round_trip(method, extra, fitted, demo_dataset, tmp_path):
    model, reports = fitted(method, **extra)
    size = model.crop
    images = sample_images(demo_dataset)
    prediction = model.predict(images, panels=True)
    assert prediction.raw_maps.shape == (3, size, size) and prediction.raw_scores.shape == (3,)
    assert np.isfinite(prediction.raw_maps).all() and np.isfinite(prediction.raw_scores).all()
    if model.capabilities.reconstructs:
        assert prediction.reconstructions.shape == (3, size, size, 3)
        assert prediction.reconstructions.dtype == np.uint8
        single = load_model(model.save(tmp_path / "m.safetensors")).predict([images[1]])
        assert single.reconstructions.shape == (1, size, size, 3)
    else:
        assert prediction.reconstructions is None and "not pixels" in model.capabilities.no_reconstruction_reason
    assert len(prediction.panels) == 3 and all(prediction.panels)
    for panel in prediction.panels[0]:
        assert panel.title and (panel.is_map or panel.image.shape[0] == size)
    # The panels reach a page through the one-image result, unchanged.
    assert image_result(prediction, 1, np.zeros((size, size, 3), np.uint8), "x.png").panels == prediction.panels[1]
    assert model.predict(images).panels is None  # not computed unless asked for
    # Scoring used gradients with respect to the images only: nothing left on, or tracked for, the weights.
    for name, value in vars(model).items():
        if isinstance(value, torch.nn.Module):
            assert all(p.grad is None and not p.requires_grad for p in value.parameters()), name
    loaded = load_model(model.save(tmp_path / "model.safetensors"))
    again = loaded.predict(images)
    assert np.array_equal(again.raw_scores, prediction.raw_scores)
    assert np.array_equal(again.raw_maps, prediction.raw_maps)
    assert loaded.label == model.label


def test_panels_of_each_method(fitted, demo_dataset):
    images = sample_images(demo_dataset)[:1]
    dfr, _ = fitted("dfr")
    panels = dfr.predict(images, panels=True).panels[0]
    assert [panel.title for panel in panels] == [f"Feature error, {layer} (stride {stride})" for layer, stride
                                                 in zip(dfr.layer_names, dfr.layer_strides())]
    assert all(panel.is_map and panel.value_range == panels[0].value_range for panel in panels)
    assert "no pixel reconstruction" in panels[0].note

    vae, _ = fitted("vae", scoring="projection")
    panels = vae.predict(images, panels=True).panels[0]
    assert [panel.title.split(" ")[0] for panel in panels] == ["Input", "VAE", "Projected", "Projection"]
    strip = panels[-1].image  # x_t at t = 0, …, T side by side
    assert strip.shape == (32, 3 * 32 + 2 * 2, 3) and "t = 0, 2, 5" in panels[-1].title
    assert len(vae.predict(images, panels=True).panels[0]) == 4
    residual, _ = fitted("vae", scoring="residual")
    assert [panel.title.split(" ")[0] for panel in residual.predict(images, panels=True).panels[0]] == [
        "Input", "VAE"]

    anogan, _ = fitted("anogan", scoring="optimize")
    panels = anogan.predict(images, panels=True).panels[0]
    assert [panel.title for panel in panels] == ["Input (working resolution)", "Generated G(z*)",
                                                 "Residual |x − G(z*)|"]
    assert panels[2].is_map and panels[2].value_range is None


def test_same_seed_same_model_and_scores(demo_dataset):
    images = good_images(demo_dataset, 12)
    for method in ("dfr", "vae", "anogan"):
        settings = {**TINY[method], "epochs": 1}
        first, second = create_model(method, **settings).fit(images), create_model(method, **settings).fit(images)
        assert all(torch.equal(a, b) for a, b in zip(first._state().values(), second._state().values())), method
        assert np.array_equal(first.predict(images[:2]).raw_scores, second.predict(images[:2]).raw_scores)
        other = create_model(method, **settings, seed=1).fit(images)
        assert not all(torch.equal(a, b) for a, b in zip(first._state().values(), other._state().values())), method


# ---------------------------------------------------------------------------------------------------------
# Learning: losses go down, the projection lowers its energy, the z optimisation its loss


def test_a_few_epochs_lower_the_training_loss(fitted):
    for method in ("dfr", "vae"):
        _, reports = fitted(method)
        losses = losses_of(reports)
        assert len(losses) == TINY[method]["epochs"] and losses[-1] < losses[0], (method, losses)


def test_dfr_chooses_the_bottleneck_by_pca(fitted):
    model, reports = fitted("dfr")
    assert "pca" in {report.stage for report in reports}
    latent = model.info["latent_dim"]
    assert 1 <= latent < sum(model.layer_channels()) and model._state()["latent_dim"].item() == latent
    # 90 % of a spectrum 5, 3, 1, 1 (total 10) takes three components; 80 % two.
    covariance = torch.diag(torch.tensor([1.0, 5.0, 1.0, 3.0], dtype=torch.float64))
    assert components_for_variance(covariance, 0.9) == 3 and components_for_variance(covariance, 0.8) == 2
    assert create_model("dfr", latent_dim=7).latent_dim == 7


def test_dfr_runs_the_seeds_vgg19_layers_with_reflection_padding():
    model = create_model("dfr", backbone="vgg19", weights="random", layers="relu1_1,relu2_1,relu3_1,relu3_3,relu4_1",
                         crop=32, resize=32, epochs=1, batch_positions=256)
    model.fit(random_images(12, 32))
    assert sum(model.layer_channels()) == 1216  # the seed's autoencoder input
    assert model.extractor.stages["conv1_1"].padding_mode == "reflect"
    assert model.predict(random_images(2, 32, seed=1)).raw_maps.shape == (2, 32, 32)


def test_dfr_resizing_matches_upsampling_then_mean_pooling():
    feature = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    rows = resize_pool_matrix(7, 32, 4, feature.device, feature.dtype)
    columns = resize_pool_matrix(9, 32, 4, feature.device, feature.dtype)
    expected = F.avg_pool2d(F.interpolate(feature, size=(32, 32), mode="bilinear", align_corners=True), 4)
    torch.testing.assert_close(rows @ feature @ columns.T, expected)


def test_the_projection_lowers_the_energy_and_follows_the_paper(fitted, demo_dataset):
    model, _ = fitted("vae", scoring="projection")
    batch, _ = model.preprocessing.batch([load_image(path) for path in sample_images(demo_dataset)])
    start = model.unit_range(batch)
    with torch.no_grad():
        before = model.energy(start, start)[0]
        projected, kept = model.project(start, keep=(0, 1))
        after = model.energy(projected, start)[0]
    assert (after < before).all() and not torch.equal(projected, start)
    # One step by hand: x₁ = x₀ − α · ∇E(x₀) ⊙ (x₀ − f(x₀))², the gradient at the current iterate.
    current = start.clone().requires_grad_(True)
    energy, reconstruction = model.energy(current, start)
    (gradient,) = torch.autograd.grad(energy.sum(), current)
    by_hand = (start - model.projection_alpha * gradient * (start - reconstruction.detach()) ** 2).clamp(0, 1)
    torch.testing.assert_close(kept[1], by_hand)
    torch.testing.assert_close(kept[0], start)


def test_anogan_z_optimisation_lowers_its_loss_independently_per_image(fitted, demo_dataset):
    model, reports = fitted("anogan", scoring="optimize")
    batch, _ = model.preprocessing.batch([load_image(path) for path in sample_images(demo_dataset)])
    latent, history = model.optimize_latent(batch)
    assert len(history) == model.z_steps and history[-1] < history[0]
    alone, _ = model.optimize_latent(batch[1:2])
    torch.testing.assert_close(alone, latent[1:2], rtol=1e-4, atol=1e-4)  # the other images change nothing
    # Both GAN losses are reported every epoch, the generator's as the main one.
    epochs = [report for report in reports if report.stage == "epoch"]
    assert len(epochs) == TINY["anogan"]["epochs"]
    assert all(set(report.losses) == {"generator", "discriminator"} and report.loss == report.losses["generator"]
               for report in epochs)


def test_anogan_encoder_is_trained_and_saved_only_when_it_scores(fitted):
    optimising, _ = fitted("anogan", scoring="optimize")
    encoding, reports = fitted("anogan", scoring="encoder")
    assert optimising.encoder is None and not any(name.startswith("encoder.") for name in optimising._state())
    assert any(name.startswith("encoder.") for name in encoding._state())
    assert len(losses_of(reports, "encoder")) == TINY["anogan"]["encoder_epochs"]


def test_sizes_the_networks_cannot_take_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        create_model("anogan", crop=48, resize=48)
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("vae", crop=60, resize=60)
    assert create_model("vae").crop == 128 and create_model("anogan").crop == 64
    assert get_method("vae").param_set().get("crop").default == 128
    assert "backbone" not in get_method("vae").param_set().names()


# ---------------------------------------------------------------------------------------------------------
# Shared pieces


def test_training_images_are_kept_exactly_and_served_in_seeded_shuffled_batches():
    normalised = (torch.randint(0, 256, (5, 3, 4, 4)).float() / 255 - 0.5) / 0.5
    images = TrainingSet.of_images(lambda: iter([normalised[:3], normalised[3:]]), "inception")
    assert images.stored.dtype == torch.uint8 and len(images) == 5
    served = list(images.shuffled(2, torch.Generator().manual_seed(0)))
    assert [len(batch) for batch in served] == [2, 2]  # the lone last image is left out (BatchNorm)
    assert images.n_batches(2) == 2 and images.n_batches(5) == 1
    everything = torch.cat(list(images.shuffled(5, torch.Generator().manual_seed(0))))
    assert torch.allclose(everything.sort(0).values, normalised.sort(0).values, atol=1e-6)


def test_train_epochs_reports_mean_losses_and_fractional_epochs():
    samples = TrainingSet(torch.arange(8.0)[:, None], lambda chosen: chosen)
    positions, reports = [], []

    def step(batch, epoch):
        positions.append(epoch)
        return {"a": float(batch.mean()), "b": 1.0}

    history = train_epochs(samples, 2, 4, 0, step, reports.append)
    assert positions == [0.0, 0.5, 1.0, 1.5]
    assert [report.step for report in reports] == [1, 2] and reports[0].loss == pytest.approx(3.5)
    assert reports[0].losses == {"a": pytest.approx(3.5), "b": 1.0} and history[1]["b"] == 1.0
    with pytest.raises(FloatingPointError):
        train_epochs(samples, 1, 4, 0, lambda batch, epoch: {"a": float("nan")}, reports.append)


def test_warm_restarts_restart_after_the_first_cycle():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = warm_restarts(optimizer, first_cycle=2, cycle_mult=2)
    rates = []
    for epoch in (0.0, 1.0, 1.9, 2.0, 5.9, 6.0):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == 1.0 and rates[1] == pytest.approx(0.5) and rates[2] < 0.01
    assert rates[3] == 1.0 and rates[4] < 0.01 and rates[5] == 1.0  # cycles of 2, then 4 epochs


def test_freeze_drops_gradients():
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    assert layer.weight.grad is not None
    freeze(layer)
    assert layer.weight.grad is None and not layer.weight.requires_grad and not layer.training


def test_panels_check_what_they_hold():
    assert Panel("map", np.zeros((4, 4), np.float32)).is_map
    assert not Panel("picture", np.zeros((4, 4, 3), np.uint8)).is_map
    with pytest.raises(ValueError, match="RGB uint8"):
        Panel("bad", np.zeros((4, 4, 3), np.float32))
    strip = frame_strip(torch.rand(3, 1, 5, 6), gap=1)
    assert strip.shape == (5, 3 * 6 + 2, 3) and (strip[:, 6] == 255).all()


def test_common_defaults_can_differ_per_method():
    from inspection.model.common_params import COMMON_PARAMS

    changed = COMMON_PARAMS.with_defaults(crop=128)
    assert changed.get("crop").default == 128 and COMMON_PARAMS.get("crop").default == 224
    with pytest.raises(ValueError, match="no such parameter"):
        COMMON_PARAMS.with_defaults(nonsense=1)


# ---------------------------------------------------------------------------------------------------------
# Bench variants and timing


def test_bench_rows_are_named_by_variant_and_own_settings():
    assert parse_method_spec("vae:scoring=residual,epochs=5") == ("vae", {"scoring": "residual", "epochs": "5"})
    assert parse_method_spec("dfr") == ("dfr", {})
    assert parse_method_spec("patchcore:layers=8,16,32,sigma=16") == ("patchcore", {"layers": "8,16,32", "sigma": "16"})
    with pytest.raises(ValueError, match="unknown method"):
        parse_method_spec("nope:epochs=1")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_method_spec("vae:epochs")
    assert run_label(create_model("vae", scoring="residual"), {"scoring": "residual"}) == "vae (residual)"
    assert run_label(create_model("vae"), {"epochs": "200"}) == "vae (projection, epochs=200)"
    assert run_label(create_model("padim"), {}) == "padim"
    assert parse_settings(["vae:epochs=3", "tile:crop=64", "dfr:epochs=9"], "tile", "vae") == {"epochs": "3",
                                                                                                "crop": "64"}
    assert parse_settings(["tile:vae:epochs=3", "bottle:vae:epochs=5", "tile:dfr:epochs=9"], "tile", "vae") == {
        "epochs": "3"}
    row = {"method": "vae", "label": "vae (residual)", "category": "c", "backbone": "-", "image_auroc": 0.5,
           "pixel_auroc": 0.5, "aupro": 0.5, "fit_seconds": 1.0, "total_seconds": 2.0, "predict_ms_per_image": 3.0,
           "predict_ms_per_image_batch16": 1.5, "peak_memory_mib": 9.0, "device": "cpu",
           "preprocessing": {"mode": "center_crop", "resize": 146, "crop": 128}}
    table = markdown_table([row, {**row, "label": "dfr", "preprocessing": {"mode": "center_crop", "resize": 256,
                                                                           "crop": 224}}],
                           {"date": "d", "inspection": "v", "torch": "t", "cpu_threads": 2, "machine": "m"})
    assert "| vae (residual) | c | - |" in table and "| 3.0 | 1.5 |" in table and "ms/img b16" in table
    assert "centre crop 146→128 (vae (residual)), centre crop 256→224 (dfr)" in table


def test_prediction_is_timed_at_batch_size_1_and_16(fitted, demo_dataset):
    model, _ = fitted("vae", scoring="residual")
    timing = time_prediction(model, good_images(demo_dataset, 4), repeats=4)
    assert set(timing) == {"predict_ms_per_image", "predict_ms_per_image_batch16", "decode_ms_per_image"}
    assert all(value > 0 for value in timing.values())
