"""Tests for inspection.data: both layouts, split rules, masks, every error, and the shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from inspection.data.datasets import Dataset, Sample, list_categories, load_sample_mask, open_dataset
from inspection.errors import DatasetError, ImageLoadError


def _write_png(path: Path, height: int = 6, width: int = 8, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), value, dtype=np.uint8)).save(path)
    return path


def _write_mask(path: Path, height: int = 6, width: int = 8) -> Path:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[1:3, 2:5] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def _mvtec_category(root: Path, name: str = "widget") -> Path:
    """A tiny MVTec-layout category: 3 train, test good 2, crack 2 (one mask), dent 1."""
    base = root / name
    for stem in ("002", "000", "001"):
        _write_png(base / "train" / "good" / f"{stem}.png")
    for stem in ("001", "000"):
        _write_png(base / "test" / "good" / f"{stem}.png")
    _write_png(base / "test" / "crack" / "000.png")
    _write_png(base / "test" / "crack" / "001.png")  # no mask for this one
    _write_png(base / "test" / "dent" / "000.jpg")
    _write_mask(base / "ground_truth" / "crack" / "000_mask.png")
    _write_mask(base / "ground_truth" / "dent" / "000_mask.png")
    (base / "test" / ".ipynb_checkpoints").mkdir()
    (base / "train" / "good" / "notes.txt").write_text("not an image")
    return base


def _folder_dataset(root: Path, good: int = 10, defects: int = 3) -> Path:
    base = root / "my_parts"
    for index in range(good):
        _write_png(base / "good" / f"g{index:02d}.png")
    for index in range(defects):
        _write_png(base / "defect" / f"d{index}.png")
    _write_mask(base / "masks" / "d0_mask.png")
    _write_mask(base / "masks" / "d1.bmp")
    return base


# --------------------------------------------------------------------------- MVTec layout


def test_mvtec_layout(tmp_path: Path) -> None:
    base = _mvtec_category(tmp_path)
    dataset = open_dataset(tmp_path, "widget")
    assert isinstance(dataset, Dataset)
    assert (dataset.root, dataset.category, dataset.layout) == (base, "widget", "mvtec")
    assert [sample.path.name for sample in dataset.train] == ["000.png", "001.png", "002.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.split == "train" for s in dataset.train)
    assert [(s.defect_type, s.path.name, s.label) for s in dataset.test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("dent", "000.jpg", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
    ]
    masks = {(s.defect_type, s.path.name): s.mask_path for s in dataset.test}
    assert masks[("crack", "000.png")] == base / "ground_truth" / "crack" / "000_mask.png"
    assert masks[("crack", "001.png")] is None
    assert masks[("dent", "000.jpg")] == base / "ground_truth" / "dent" / "000_mask.png"
    assert masks[("good", "000.png")] is None
    assert all(s.split == "test" for s in dataset.test)
    assert dataset.defect_types() == ["crack", "dent"]
    assert dataset.counts() == {"train": {"good": 3}, "test": {"crack": 2, "dent": 1, "good": 2}}
    assert dataset.has_masks()


def test_category_folder_opened_directly(tmp_path: Path) -> None:
    base = _mvtec_category(tmp_path)
    dataset = open_dataset(base)
    assert dataset.category == "widget" and dataset.layout == "mvtec" and len(dataset.test) == 5


def test_mvtec_without_test_or_masks(tmp_path: Path) -> None:
    _write_png(tmp_path / "plain" / "train" / "good" / "a.png")
    dataset = open_dataset(tmp_path, "plain")
    assert dataset.test == [] and not dataset.has_masks() and dataset.defect_types() == []
    assert dataset.counts() == {"train": {"good": 1}, "test": {}}


def test_list_categories(tmp_path: Path) -> None:
    _mvtec_category(tmp_path, "zeta")
    _mvtec_category(tmp_path, "alpha")
    (tmp_path / "not_a_category" / "stuff").mkdir(parents=True)
    assert list_categories(tmp_path) == ["alpha", "zeta"]
    with pytest.raises(DatasetError, match="missing"):
        list_categories(tmp_path / "missing")


def test_listing_does_not_decode_images(tmp_path: Path, monkeypatch) -> None:
    _mvtec_category(tmp_path)
    _folder_dataset(tmp_path)

    def decode_forbidden(self, *args, **kwargs):
        raise AssertionError("an image was decoded while listing")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode_forbidden)
    monkeypatch.setattr(Image, "open", decode_forbidden)
    open_dataset(tmp_path, "widget")
    open_dataset(tmp_path, "my_parts")


# --------------------------------------------------------------------------- plain folder layout


def test_folder_layout_split_and_masks(tmp_path: Path) -> None:
    base = _folder_dataset(tmp_path)
    dataset = open_dataset(base)
    assert (dataset.layout, dataset.category, dataset.root) == ("folder", "my_parts", base)
    test_good = [s for s in dataset.test if s.label == 0]
    assert len(test_good) == 2 and len(dataset.train) == 8  # 20 % of 10
    assert {s.path for s in dataset.train}.isdisjoint(s.path for s in test_good)
    assert [s.path.name for s in dataset.train] == sorted(s.path.name for s in dataset.train)
    defects = [s for s in dataset.test if s.label == 1]
    assert [s.defect_type for s in defects] == ["defect"] * 3
    assert [s.path.name for s in defects] == ["d0.png", "d1.png", "d2.png"]
    assert [s.mask_path.name if s.mask_path else None for s in defects] == ["d0_mask.png", "d1.bmp", None]
    assert dataset.counts() == {"train": {"good": 8}, "test": {"defect": 3, "good": 2}}
    assert dataset.defect_types() == ["defect"] and dataset.has_masks()


def test_folder_split_is_seeded_and_deterministic(tmp_path: Path) -> None:
    base = _folder_dataset(tmp_path, good=20)
    held_out = lambda seed: [s.path.name for s in open_dataset(base, seed=seed).test if s.label == 0]  # noqa: E731
    assert held_out(0) == held_out(0)
    assert len(held_out(0)) == 4
    assert any(held_out(seed) != held_out(0) for seed in range(1, 6))
    expected = sorted(f"g{i:02d}.png" for i in np.random.default_rng(3).permutation(20)[:4])
    assert held_out(3) == expected


@pytest.mark.parametrize(
    ("good", "fraction", "held_out"), [(1, 0.2, 0), (2, 0.2, 1), (3, 0.01, 1), (4, 0.9, 3), (5, 0.0, 0)]
)
def test_folder_split_sizes(tmp_path: Path, good: int, fraction: float, held_out: int) -> None:
    base = _folder_dataset(tmp_path, good=good, defects=0)
    dataset = open_dataset(base, test_fraction=fraction)
    assert len(dataset.test) == held_out and len(dataset.train) == good - held_out


def test_folder_mask_preference(tmp_path: Path) -> None:
    base = _folder_dataset(tmp_path, good=2, defects=1)
    _write_mask(base / "masks" / "d0.png")
    _write_mask(base / "masks" / "d0_mask.jpg")
    assert open_dataset(base).test[0].mask_path == base / "masks" / "d0_mask.png"


def test_bad_test_fraction(tmp_path: Path) -> None:
    base = _folder_dataset(tmp_path)
    with pytest.raises(ValueError, match="test_fraction"):
        open_dataset(base, test_fraction=1.0)


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere.*not found"):
        open_dataset(tmp_path / "nowhere")


def test_missing_category_lists_those_found(tmp_path: Path) -> None:
    _mvtec_category(tmp_path, "bottle")
    _mvtec_category(tmp_path, "cable")
    with pytest.raises(DatasetError, match="'screw' not found.*bottle, cable"):
        open_dataset(tmp_path, "screw")


def test_unknown_layout_says_what_is_expected(tmp_path: Path) -> None:
    _write_png(tmp_path / "random" / "x.png")
    with pytest.raises(DatasetError) as caught:
        open_dataset(tmp_path / "random")
    message = str(caught.value)
    assert "random" in message and "train/good" in message and "good/" in message and "defect/" in message


def test_root_of_categories_without_category(tmp_path: Path) -> None:
    _mvtec_category(tmp_path, "bottle")
    with pytest.raises(DatasetError, match="bottle.*category="):
        open_dataset(tmp_path)


@pytest.mark.parametrize("layout", ["mvtec", "folder"])
def test_no_training_images(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "empty" / ("train/good" if layout == "mvtec" else "good")
    folder.mkdir(parents=True)
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no training images"):
        open_dataset(tmp_path / "empty")


# --------------------------------------------------------------------------- masks


def test_load_sample_mask(tmp_path: Path) -> None:
    _mvtec_category(tmp_path)
    dataset = open_dataset(tmp_path, "widget")
    by_key = {(s.defect_type, s.path.name): s for s in dataset.test}
    crack = load_sample_mask(by_key[("crack", "000.png")])
    assert crack.dtype == bool and crack.shape == (6, 8) and crack.sum() == 6 and crack[1, 2]
    assert load_sample_mask(by_key[("crack", "000.png")], (6, 8)).sum() == 6
    no_mask = load_sample_mask(by_key[("crack", "001.png")])
    assert no_mask.shape == (6, 8) and not no_mask.any()
    good = load_sample_mask(by_key[("good", "000.png")], (3, 4))
    assert good.shape == (3, 4) and good.dtype == bool and not good.any()


def test_mask_shape_mismatch_names_both_files(tmp_path: Path) -> None:
    base = _mvtec_category(tmp_path)
    mask_path = base / "ground_truth" / "crack" / "000_mask.png"
    sample = Sample(base / "test" / "crack" / "000.png", 1, "crack", mask_path, "test")
    with pytest.raises(DatasetError) as caught:
        load_sample_mask(sample, (60, 80))
    assert "000_mask.png" in str(caught.value) and str(sample.path) in str(caught.value)
    _write_mask(base / "ground_truth" / "crack" / "000_mask.png", 5, 8)  # wrong size vs its image
    with pytest.raises(DatasetError, match="000_mask.png"):
        load_sample_mask(sample)


def test_broken_mask_file_is_named(tmp_path: Path) -> None:
    base = _mvtec_category(tmp_path)
    (base / "ground_truth" / "crack" / "000_mask.png").write_text("oops")
    sample = open_dataset(tmp_path, "widget").test[0]
    with pytest.raises(ImageLoadError, match="000_mask.png"):
        load_sample_mask(sample)


# --------------------------------------------------------------------------- shared real data


def test_mvtec_bottle(shared_data: Path) -> None:
    dataset = open_dataset(shared_data / "mvtec_ad", "bottle")
    counts = dataset.counts()
    assert len(dataset.train) == 209 and len(dataset.test) == 83
    assert counts["test"] == {"broken_large": 20, "broken_small": 22, "contamination": 21, "good": 20}
    defects = [s for s in dataset.test if s.label == 1]
    assert len(defects) == 63 and all(s.mask_path is not None for s in defects)
    assert list_categories(shared_data / "mvtec_ad") == ["bottle"]
    mask = load_sample_mask(defects[0])
    assert mask.shape == (900, 900) and mask.any()


def test_magnetic_tile(shared_data: Path) -> None:
    dataset = open_dataset(shared_data / "magnetic_tile", "magnetic_tile")
    assert len(dataset.train) == 762 and len(dataset.test) == 582
    assert sum(s.mask_path is not None for s in dataset.test) == 392
    assert dataset.counts()["test"]["good"] == 190
    assert dataset.defect_types() == ["blowhole", "break", "crack", "fray", "uneven"]
    empty_masks = [s for s in dataset.test if s.defect_type == "uneven" and not load_sample_mask(s).any()]
    assert len(empty_masks) == 4
