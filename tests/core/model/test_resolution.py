"""Large and non-square images: aspect mode (aspect kept, padded to the stride), tiles mode (overlapping tiles
stitched into one map) and honest pixel metrics (a defect pixel the model never saw counts, as missed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inspection.bench.resize_modes import resize_mode_costs
from inspection.data.datasets import open_dataset
from inspection.data.preprocess import Preprocessing, map_to_frame
from inspection.errors import ParameterError
from inspection.methods.padim import PaDiM
from inspection.methods.patchcore import PatchCore, _replicate_content
from inspection.model.prediction import Prediction
from inspection.ops.knn import nearest_neighbors
from inspection.ops.tiles import cut_tiles, stitch, tile_starts
from inspection.registry import get_method, load_model
from inspection.scores.metrics import pixel_metrics, region_metrics
from inspection.workflows.evaluate import evaluate, time_prediction

SIZES = [(60, 150), (150, 60), (80, 80), (50, 170)]  # wide, tall, square, very wide: aspect 0.4 … 3.4


def _images(seed: int = 0, count: int = 12) -> list[np.ndarray]:
    """Smooth random images of several aspect ratios (a texture a random backbone scores steadily)."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        base = rng.integers(90, 160, (height // 10 + 1, width // 10 + 1, 3)).astype(np.uint8)
        images.append(np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR)))
    return images


@pytest.fixture(scope="module")
def aspect_model() -> PatchCore:
    return PatchCore(resize_mode="aspect", resize=64, crop=64, weights="random", min_holdout=3,
                     batch_size=4).fit(_images())


# --- tiles: stitching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,tile,overlap", [(100, 230, 64, 16), (64, 64, 64, 0), (97, 131, 40, 13)])
def test_stitching_reproduces_a_known_map_exactly(height: int, width: int, tile: int, overlap: int):
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    columns = torch.arange(width, dtype=torch.float32)[None, :]
    for known in (torch.full((height, width), 3.25), 0.5 * rows + 0.25 * columns - 7.0, torch.sin(rows / 9) * columns):
        tiles = cut_tiles(known[None, None].repeat(2, 1, 1, 1), tile, overlap)[:, 0]
        stitched = stitch(tiles, height, width, overlap)
        assert stitched.shape == (2, height, width)
        torch.testing.assert_close(stitched[1], known, rtol=1e-6, atol=1e-5)  # no seam at any tile border
    constant = stitch(cut_tiles(torch.full((1, 1, height, width), 3.25), tile, overlap)[:, 0], height, width, overlap)
    assert float(constant.max() - constant.min()) < 1e-5


def test_tiles_cover_the_frame_with_the_overlap_asked_for():
    for length, tile, overlap in [(230, 64, 16), (64, 64, 8), (1000, 224, 32), (225, 224, 32)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(tile - (b - a) >= overlap for a, b in zip(starts, starts[1:]))


# --- aspect: padding and batching ---------------------------------------------------------------------------


def test_aspect_geometry_keeps_the_aspect_and_pads_to_the_stride():
    geometry = Preprocessing("aspect", 256, 224, multiple=32).geometry(300, 700)
    assert (geometry.resized_height, geometry.resized_width) == (256, 597)
    assert (geometry.height, geometry.width) == (256, 608) and geometry.seen == (256, 597)
    assert geometry.inspected_fraction == 1.0
    centre = Preprocessing("center_crop", 256, 224).geometry(900, 900)
    assert centre.inspected_fraction == pytest.approx(224 ** 2 / 256 ** 2)


def test_aspect_mode_scores_images_of_different_aspect_ratios_in_one_call(aspect_model):
    images = _images(seed=1, count=8)
    together = aspect_model.predict(images, batch_size=3)
    for index, image in enumerate(images):
        geometry = together.geometries[index]
        assert (geometry.original_height, geometry.original_width) == image.shape[:2]
        seen_h, seen_w = geometry.seen
        assert (seen_h, seen_w) == (geometry.resized_height, geometry.resized_width)
        assert min(seen_h, seen_w) == 64 and geometry.height % 16 == 0 and geometry.width % 16 == 0
        working = together.raw_maps[index]
        assert np.isfinite(working[:seen_h, :seen_w]).all()  # the content is scored …
        assert np.isnan(working[seen_h:]).all() and np.isnan(working[:, seen_w:]).all()  # … the rest is not
        assert np.isfinite(together.map_on_original(index)).all()  # nothing of the image is left out
        alone = aspect_model.predict([image])
        assert together.raw_scores[index] == pytest.approx(alone.raw_scores[0], rel=1e-4)  # order kept
        np.testing.assert_allclose(together.raw_maps[index][:seen_h, :seen_w], alone.raw_maps[0][:seen_h, :seen_w],
                                   rtol=1e-4, atol=1e-4)


def test_the_paper_reweighting_works_in_aspect_mode():
    model = PatchCore(resize_mode="aspect", resize=64, crop=64, weights="random", min_holdout=3, batch_size=4,
                      reweight=True).fit(_images())
    prediction = model.predict(_images(seed=5, count=4))
    assert np.isfinite(prediction.raw_scores).all() and (prediction.raw_scores > 0).all()


def test_speed_is_timed_on_images_of_different_sizes(aspect_model):
    timing = time_prediction(aspect_model, _images(seed=4, count=5), repeats=3, warmup=1, budget_s=1.0)
    assert timing["predict_ms_per_image"] > 0 and timing["predict_ms_per_image_batch16"] > 0


def test_padding_never_raises_a_score(aspect_model):
    grid = torch.zeros(2, 4, 6)
    grid[:, :2, :4] = torch.rand(2, 2, 4)
    grid[:, 2:, :] = 100.0  # patches on padding scoring very high
    grid[:, :, 4:] = 100.0
    content = torch.tensor([[16, 32], [13, 30]])  # pixels of a 32 × 48 working size: 8-pixel cells
    replaced, source = _replicate_content(grid, content, (32, 48))
    assert int(source[0, 3, 5]) == 1 * 6 + 3 and int(source[1, 0, 0]) == 0
    assert float(replaced.max()) == pytest.approx(float(grid[:, :2, :4].max()))
    torch.testing.assert_close(replaced[:, :2, :4], grid[:, :2, :4])
    torch.testing.assert_close(replaced[:, 3, 5], grid[:, 1, 3])  # the nearest content patch's score

    # Through the model: with noise on the padding, the map is still defined on the content only, and the image
    # score is the highest score of the patches centred on content (the noise reaches those only through the
    # backbone's receptive field, which is why the padding repeats the edge pixels).
    image = _images(seed=2, count=4)[3]  # 50 × 170 → 64 × 218, padded to 64 × 224
    tensor, geometries = aspect_model.preprocessing.batch([image])
    assert geometries[0].seen == (64, 218) and tensor.shape[-2:] == (64, 224)
    noisy = tensor.clone()
    noisy[..., 218:] = torch.randn(noisy[..., 218:].shape) * 5
    maps, scores, _, _ = aspect_model._predict_batch(noisy, False, geometries)
    assert np.isnan(maps[0][:, 218:]).all() and np.isfinite(maps[0][:, :218]).all()
    patches, (height, width) = aspect_model.embed(aspect_model.features(noisy))
    grid_scores = nearest_neighbors(patches, aspect_model.memory_bank, k=1)[0][:, 0].view(height, width)
    cell = 64 // height
    content_columns = int(np.sum((np.arange(width) + 0.5) * cell < 218))
    assert content_columns < width  # a padding column of patches exists …
    assert scores[0] == pytest.approx(float(grid_scores[:, :content_columns].max()))  # … and has no say


def test_methods_without_a_fixed_grid_only_refuse_clearly():
    with pytest.raises(ParameterError, match="padim does not offer resize_mode 'aspect': it learns one Gaussian"):
        PaDiM(resize_mode="aspect")
    with pytest.raises(ParameterError, match="tiles"):
        PaDiM(resize_mode="tiles")
    with pytest.raises(ParameterError, match="tile_overlap"):
        PatchCore(resize_mode="tiles", crop=64, resize=64, tile_overlap=64)
    assert PatchCore(resize_mode="aspect", weights="random").preprocessing.multiple == 16  # its deepest stride


# --- the new settings in the model file ---------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"resize_mode": "aspect", "resize": 64},
                                      {"resize_mode": "tiles", "resize": 80, "crop": 48, "tile_overlap": 12},
                                      {"resize_mode": "full", "intensity": "robust"}])
def test_new_settings_round_trip_through_the_model_file(tmp_path, settings):
    values = {"crop": 64, **settings}
    model = PatchCore(weights="random", min_holdout=3, batch_size=4, **values).fit(_images())
    path = model.save(tmp_path / "model")
    loaded = load_model(path)
    assert loaded.preprocessing == model.preprocessing
    assert {key: loaded.get_params()[key] for key in values} == values
    images = _images(seed=3, count=4)
    before, after = model.predict(images), loaded.predict(images)
    np.testing.assert_allclose(after.raw_scores, before.raw_scores, rtol=1e-5)
    np.testing.assert_allclose(after.raw_maps, before.raw_maps, rtol=1e-5, atol=1e-6)
    if settings["resize_mode"] == "tiles":  # one stitched map of each whole (resized) image
        for index, geometry in enumerate(after.geometries):
            assert (geometry.height, geometry.width) == (geometry.resized_height, geometry.resized_width)
            assert min(geometry.height, geometry.width) == 80
            assert np.isfinite(after.raw_maps[index][: geometry.height, : geometry.width]).all()


# --- honest metrics -----------------------------------------------------------------------------------------


def _hand_auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def test_a_defect_outside_the_centre_crop_counts_as_missed():
    preprocessing = Preprocessing("center_crop", 40, 20)
    geometry = preprocessing.geometry(40, 40)  # the crop sees rows and columns 10 … 29
    assert geometry.inspected_fraction == 0.25
    mask = np.zeros((40, 40), bool)
    mask[14:18, 14:18] = True  # inside the crop: found perfectly
    mask[0:4, 0:6] = True  # outside: never seen
    working = np.zeros((20, 20), np.float32)
    working[4:8, 4:8] = 1.0
    frame = map_to_frame(working, geometry)
    frame_mask = preprocessing.frame_mask(mask, geometry)
    assert np.isneginf(frame).sum() == 40 * 40 - 20 * 20 and frame_mask.sum() == mask.sum()
    metrics = pixel_metrics(frame[None], frame_mask[None])
    assert metrics["pixel_auroc"] == pytest.approx(_hand_auroc(frame[mask], frame[~mask]))
    assert metrics["pixel_auroc"] < 0.9  # within the crop alone it would be 1.0
    assert pixel_metrics(working[None], preprocessing.transform_mask(mask, geometry)[None])["pixel_auroc"] == 1.0
    assert region_metrics(frame[None], frame_mask[None], 0.5)["region_recall"] == 0.5


class _CentreOnlyModel:
    """A stand-in model that scores the centre crop perfectly (1 on the defect, 0 elsewhere)."""

    def __init__(self) -> None:
        self.preprocessing = Preprocessing("center_crop", 40, 20)
        self.calibration = None
        self.torch_device = torch.device("cpu")

    def predict(self, paths, progress=None) -> Prediction:
        maps, geometries = [], []
        for path in paths:
            image = np.asarray(Image.open(path).convert("RGB"))
            working, geometry = self.preprocessing.apply_geometry(image)
            maps.append((working[:, :, 0] > 127).astype(np.float32))
            geometries.append(geometry)
        scores = np.array([float(item.max()) for item in maps])
        return Prediction(np.stack(maps), scores, geometries, None)


def test_evaluate_counts_every_defect_pixel_and_reports_the_inspected_fraction(tmp_path):
    for folder in ("good", "defect", "masks"):
        (tmp_path / folder).mkdir()
    for index in range(6):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "good" / f"g{index}.png")
    picture = np.zeros((40, 40), np.uint8)
    picture[14:18, 14:18] = 255  # seen by the crop
    picture[0:4, 0:6] = 255  # not seen
    Image.fromarray(picture).save(tmp_path / "defect" / "d0.png")
    Image.fromarray(picture).save(tmp_path / "masks" / "d0_mask.png")
    dataset = open_dataset(tmp_path)
    evaluation = evaluate(_CentreOnlyModel(), dataset, timing_repeats=0)
    metrics = evaluation.metrics
    assert metrics["inspected_fraction"] == 0.25
    n_good_test = sum(sample.label == 0 for sample in dataset.test)
    # Positives: 16 found (score 1) and 24 missed (-inf); negatives: the good pixels in the crop (score 0) — those
    # outside were never looked at and earn no credit as correct negatives.
    positives = np.array([1.0] * 16 + [-np.inf] * 24)
    negatives = np.array([0.0] * (400 - 16 + 400 * n_good_test))
    assert metrics["pixel_auroc"] == pytest.approx(_hand_auroc(positives, negatives)) == pytest.approx(0.4)
    assert evaluation.pixel_counts["defect"] == 16  # the pixel quantiles describe what the model scored


def test_what_each_resize_mode_costs_for_a_long_image():
    """A 500 × 1250 frame (KolektorSDD's shape): the crop sees the middle third, aspect all of it at the crop's scale,
    tiles all of it in pieces; the backbone's pixels and features grow accordingly."""
    costs = {cost.mode: cost for cost in resize_mode_costs(get_method("patchcore"), {}, 500, 1250, measure=True,
                                                           repeats=1)}
    assert costs["center_crop"].working == "224 × 224" and costs["center_crop"].inspected_fraction == 0.306
    assert costs["aspect"].working == "256 × 640" and costs["aspect"].inspected_fraction == 1.0
    assert costs["tiles"].working == "8 tiles of 224 × 224" and costs["tiles"].pixels == 8 * 224 * 224
    assert costs["center_crop"].feature_mib < costs["aspect"].feature_mib < costs["tiles"].feature_mib
    assert all(cost.ms_per_image > 0 for cost in costs.values())
