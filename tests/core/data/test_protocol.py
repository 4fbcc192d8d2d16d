"""The non-aligned (rotated) protocol: seeded per image, angles and crops in range, image and mask moved alike, the
model seeing a random 224 crop of the rotated 256 image; the aligned protocol unchanged; fit/evaluate record it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from app_testing import SMALL_PARAMS, train_small_model
from inspection.bench.run import markdown_table
from inspection.cli import main
from inspection.data.datasets import load_sample_mask, open_dataset
from inspection.data.preprocess import Preprocessing
from inspection.data.protocol import ALIGNED, CROP, FRAME, MAX_ANGLE, AlignmentProtocol, Placement
from inspection.errors import ModelFileError
from inspection.model.batching import decode
from inspection.model.header import ModelInfo
from inspection.model.modelfile import read_model_info
from inspection.registry import create_model, load_model
from inspection.workflows.evaluate import evaluate
from inspection.workflows.train import fit_on_dataset

ROTATED = AlignmentProtocol("rotated", 2)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (bilinear resampling of it differs from another order of the same steps by ≤ 1 level)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def square_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask with the same square painted into both (away from the border)."""
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), bool)
    top, left = height // 3, width // 2
    image[top: top + 40, left: left + 30] = 255
    mask[top: top + 40, left: left + 30] = True
    return image, mask


def test_same_seed_same_pixels_per_image():
    image = smooth_image(300, 200)
    key = "test/hole/000.png"
    first, again = ROTATED.placement(key), AlignmentProtocol("rotated", 2).placement(key)
    assert first == again
    assert np.array_equal(first.apply_image(image), again.apply_image(image))
    assert AlignmentProtocol("rotated", 3).placement(key) != first  # another seed, another move
    assert ROTATED.placement("test/hole/001.png") != first  # each image its own move
    assert ALIGNED.placement(key) is None


def test_angles_and_crops_stay_in_range():
    placements = [ROTATED.placement(f"train/good/{index:03d}.png") for index in range(400)]
    angles = np.array([placement.angle for placement in placements])
    crops = np.array([(placement.crop_y, placement.crop_x) for placement in placements])
    assert MAX_ANGLE == 10 and (CROP, FRAME) == (224, 256)
    assert np.all(np.abs(angles) < MAX_ANGLE) and angles.min() < -9 and angles.max() > 9
    assert crops.min() == 0 and crops.max() == FRAME - CROP


@pytest.mark.parametrize("angle, crop_y, crop_x", [(0.0, 0, 0), (0.0, 32, 32), (0.0, 5, 27), (7.5, 3, 30),
                                                    (-9.9, 32, 0)])
def test_the_model_sees_a_random_224_crop_of_the_rotated_256_image(angle, crop_y, crop_x):
    image = smooth_image(FRAME, FRAME)
    seen, _ = Preprocessing().apply_geometry(Placement(angle, crop_y, crop_x).apply_image(image))
    centre = ((FRAME - 1) / 2, (FRAME - 1) / 2)
    rotated = cv2.warpAffine(image, cv2.getRotationMatrix2D(centre, angle, 1.0), (FRAME, FRAME),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    window = rotated[crop_y: crop_y + CROP, crop_x: crop_x + CROP]
    assert seen.shape == window.shape == (CROP, CROP, 3)
    difference = np.abs(seen.astype(int) - window.astype(int)).max()
    assert difference == 0 if angle == 0 else difference <= 1


@pytest.mark.parametrize("shape", [(256, 256), (300, 420), (900, 900)])
def test_image_and_mask_stay_aligned(shape):
    image, mask = square_pair(*shape)
    for index in range(5):
        placement = ROTATED.placement(f"test/crack/{index:03d}.png")
        moved_image, moved_mask = placement.apply_image(image), placement.apply_mask(mask)
        assert moved_image.shape == image.shape and moved_mask.shape == mask.shape and moved_mask.dtype == bool
        bright = moved_image[:, :, 0] > 127
        # The square lands at the same place in both: same centre, and they differ at most along its outline.
        centre_mask = np.argwhere(moved_mask).mean(axis=0)
        centre_image = np.argwhere(bright).mean(axis=0)
        assert np.abs(centre_mask - centre_image).max() < 0.5
        assert (bright != moved_mask).sum() <= 0.05 * mask.sum()
        assert moved_mask.sum() == pytest.approx(mask.sum(), rel=0.05)


def test_pixels_from_outside_the_image_are_not_defects():
    image = np.full((256, 256, 3), 200, np.uint8)
    mask = np.ones((256, 256), bool)
    placement = Placement(10.0, 0, 32)
    moved_image, moved_mask = placement.apply_image(image), placement.apply_mask(mask)
    assert np.all(moved_image == 200)  # the corners are filled by reflection, not with black
    assert moved_mask[128, 128] and not moved_mask[0, 0] and not moved_mask[255, 255]
    # Exactly the pixels whose source lies outside the image are 0 (up to nearest-neighbour rounding at the edge).
    inverse = cv2.invertAffineTransform(placement.matrix(256, 256))
    rows, columns = np.mgrid[0:256, 0:256]
    source_x = inverse[0, 0] * columns + inverse[0, 1] * rows + inverse[0, 2]
    source_y = inverse[1, 0] * columns + inverse[1, 1] * rows + inverse[1, 2]
    margin = np.minimum(np.minimum(source_x, 255 - source_x), np.minimum(source_y, 255 - source_y))
    assert np.all(~moved_mask[margin < -1]) and np.all(moved_mask[margin > 1])
    assert (margin < -1).sum() > 1000


def write_tiny_mvtec(root: Path) -> Path:
    """CATEGORY/train/good (3 images), test/good, test/crack with a painted square and its mask."""
    base = root / "part"
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (base / folder).mkdir(parents=True)
    for index in range(3):
        Image.fromarray(smooth_image(240, 320, index)).save(base / "train" / "good" / f"{index:03d}.png")
    Image.fromarray(smooth_image(240, 320, 9)).save(base / "test" / "good" / "000.png")
    image, mask = square_pair(240, 320)
    Image.fromarray(image).save(base / "test" / "crack" / "000.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(base / "ground_truth" / "crack" / "000_mask.png")
    return base


def test_the_loading_path_moves_image_and_mask_alike(tmp_path):
    base = write_tiny_mvtec(tmp_path)
    plain = open_dataset(tmp_path, "part")
    assert plain.protocol == ALIGNED and plain.with_protocol(ALIGNED) == plain
    assert all(sample.placement is None and sample.source == sample.path for sample in plain.train + plain.test)

    moved = plain.with_protocol(ROTATED)
    assert moved.protocol == ROTATED and [sample.path for sample in moved.test] == [s.path for s in plain.test]
    defect = next(sample for sample in moved.test if sample.label == 1)
    assert defect.placement == ROTATED.placement("test/crack/000.png")  # drawn from its path inside the dataset
    image, mask = decode(defect.source), load_sample_mask(defect)
    assert image.shape[:2] == mask.shape == (240, 320)
    assert not np.array_equal(image, decode(defect.path))
    bright = image[:, :, 0] > 127
    assert np.abs(np.argwhere(mask).mean(axis=0) - np.argwhere(bright).mean(axis=0)).max() < 0.5
    assert np.array_equal(load_sample_mask(next(s for s in moved.test if s.label == 0)), np.zeros((240, 320), bool))
    # Reopening gives the same moves, and the train images are moved too.
    again = open_dataset(base).with_protocol(ROTATED)
    assert [s.placement for s in again.train] == [s.placement for s in moved.train]
    assert all(sample.placement is not None for sample in moved.train)


@pytest.fixture(scope="module")
def small_model(demo_root, tmp_path_factory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("protocol-models") / "small.safetensors")


def test_the_aligned_protocol_is_unchanged(small_model, demo_root):
    model = load_model(small_model)
    assert model.info.protocol == {"name": "aligned"}
    plain = evaluate(model, open_dataset(demo_root), timing_repeats=0)
    aligned = evaluate(model, open_dataset(demo_root).with_protocol(ALIGNED), timing_repeats=0)
    assert "protocol" not in aligned.metrics
    assert json.dumps(plain.metrics, sort_keys=True) == json.dumps(aligned.metrics, sort_keys=True)
    assert plain.records == aligned.records
    # Fitting through the dataset under the aligned protocol is fitting on the files themselves.
    train = open_dataset(demo_root).train
    by_paths = create_model("patchcore", **SMALL_PARAMS).fit([sample.path for sample in train])
    by_dataset = create_model("patchcore", **SMALL_PARAMS)
    fit_on_dataset(by_dataset, open_dataset(demo_root).with_protocol(ALIGNED), evaluate_test=False)
    assert by_paths.calibration.heldout_scores == by_dataset.calibration.heldout_scores
    assert by_paths.calibration.image_threshold == by_dataset.calibration.image_threshold


def test_cli_evaluate_with_the_rotated_protocol(small_model, demo_root, tmp_path, capsys):
    out = tmp_path / "rotated.json"
    assert main(["--quiet", "evaluate", "--model", str(small_model), "--data", str(demo_root), "--protocol",
                 "rotated", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["name"] == "rotated" and result["protocol"]["seed"] == 0
    assert result["protocol"]["fill"] == "reflect" and result["protocol"]["n_defect_masks_out_of_view"] >= 0
    assert 0.5 < result["protocol"]["image_auroc_defects_in_view"] <= 1
    assert result["n_test"] == 50 and 0.5 < result["image_auroc"] <= 1 and 0.5 < result["pixel_auroc"] <= 1
    capsys.readouterr()
    assert main(["--quiet", "evaluate", "--model", str(small_model), "--data", str(demo_root), "--protocol",
                 "rotated", "--protocol-seed", "-1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "protocol_seed" in error and "Traceback" not in error


def test_fit_records_the_protocol_and_evaluate_follows_it(demo_root, tmp_path):
    out = tmp_path / "rotated"
    assert main(["--quiet", "fit", "--method", "padim", "--data", str(demo_root), "--out", str(out), "--resize",
                 "96", "--crop", "96", "--protocol", "rotated", "--protocol-seed", "2"]) == 0
    info = read_model_info(out.with_suffix(".safetensors"))["info"]
    assert info["protocol"] == ROTATED.to_dict()
    assert info["metrics"]["protocol"]["name"] == "rotated" and info["metrics"]["protocol"]["seed"] == 2
    assert load_model(out).info.alignment_protocol() == ROTATED
    evaluated = tmp_path / "eval.json"
    assert main(["--quiet", "evaluate", "--model", str(out), "--data", str(demo_root), "--json",
                 str(evaluated)]) == 0
    assert json.loads(evaluated.read_text())["protocol"]["seed"] == 2  # the model's own protocol by default
    assert main(["--quiet", "evaluate", "--model", str(out), "--data", str(demo_root), "--protocol", "aligned",
                 "--json", str(evaluated)]) == 0
    assert "protocol" not in json.loads(evaluated.read_text())


def test_model_files_and_tables_carry_the_protocol():
    assert ModelInfo.from_dict({}).protocol == {"name": "aligned"}  # files from before protocols
    assert ModelInfo.from_dict({"protocol": ROTATED.to_dict()}).alignment_protocol() == ROTATED
    with pytest.raises(ModelFileError, match="protocol"):
        ModelInfo.from_dict({"protocol": {"name": "sideways"}})
    with pytest.raises(ModelFileError, match="protocol"):
        ModelInfo.from_dict({"protocol": {"name": "rotated", "seed": -1}})
    row = {"method": "padim", "category": "bottle", "preprocessing": Preprocessing().to_dict(),
           "protocol": ROTATED.to_dict()}
    table = markdown_table([row], {"date": "d", "inspection": "v", "torch": "t", "cpu_threads": 2, "machine": "m"})
    assert "Protocol: rotated (seed 2)" in table
