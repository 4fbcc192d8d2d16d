"""Tests for inspection.demo: layout, determinism, atomic/idempotent writing, defect difficulty."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.data import demo
from inspection.data.datasets import load_sample_mask, open_dataset
from inspection.data.demo import DEMO_CATEGORY, default_demo_root, demo_dataset, generate_demo_dataset
from inspection.data.images import load_image, read_image_info


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    root = tmp_path_factory.mktemp("demo")
    started = time.perf_counter()
    category = generate_demo_dataset(root, seed=0)
    return category, time.perf_counter() - started


def test_layout_and_counts(generated: tuple[Path, float]) -> None:
    category, seconds = generated
    assert category.name == DEMO_CATEGORY == "surface"
    assert seconds < 10.0
    dataset = open_dataset(category.parent, DEMO_CATEGORY)
    assert dataset.layout == "mvtec"
    assert dataset.counts() == {"train": {"good": 60}, "test": {"good": 20, "hole": 10, "scratch": 10, "stain": 10}}
    assert [p.name for p in sorted((category / "test" / "hole").iterdir())][:3] == ["000.png", "001.png", "002.png"]
    defects = [s for s in dataset.test if s.label == 1]
    assert all(s.mask_path is not None for s in defects)
    assert read_image_info(dataset.train[0].path) == {"width": 256, "height": 256, "mode": "RGB", "format": "PNG"}
    for sample in defects:
        mask = load_sample_mask(sample, (256, 256))
        assert 5 <= mask.sum() <= 256 * 256 // 8, sample.path
        raw = cv2.imread(str(sample.mask_path), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(raw).tolist()) == {0, 255}
        # Defects are placed fully inside the image, away from the border.
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_readme_and_marker(generated: tuple[Path, float]) -> None:
    category, _ = generated
    readme = (category / "README.txt").read_text(encoding="utf-8")
    assert "ynthetic" in readme and "inspection.demo" in readme and "seed 0" in readme
    marker = json.loads((category / demo.MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["version"] == demo.GENERATOR_VERSION and marker["seed"] == 0
    assert not [p for p in category.parent.iterdir() if p.name != DEMO_CATEGORY]  # no temp leftovers


def test_same_seed_gives_byte_identical_files(generated: tuple[Path, float], tmp_path: Path) -> None:
    category, _ = generated
    again = generate_demo_dataset(tmp_path / "other", seed=0)
    first, second = _file_bytes(category), _file_bytes(again)
    assert len(first) == 60 + 20 + 3 * 10 * 2 + 2  # images, masks, README, marker
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_good_images_genuinely_vary(generated: tuple[Path, float]) -> None:
    category, _ = generated
    goods = np.stack([load_image(category / "train" / "good" / f"{i:03d}.png") for i in range(0, 60, 6)]).astype(float)
    assert np.ptp(goods.mean(axis=(1, 2, 3))) > 3.0  # brightness jitter
    assert np.ptp(goods.std(axis=(1, 2, 3))) > 1.0  # contrast jitter
    assert np.abs(goods[0] - goods[1]).mean() > 5.0  # different texture, not a copy


def _defect_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Colour distance between the defect's mean and the mean of a ring of surface around it.

    The ring starts a few pixels out so that a stain's feathered edge does not dilute it.
    """
    grown = lambda size: cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)  # noqa: E731
    ring = grown(25) & ~grown(9)
    return float(np.linalg.norm(image[mask].astype(float).mean(0) - image[ring].astype(float).mean(0)))


@pytest.mark.parametrize("defect_type", ["scratch", "hole", "stain"])
def test_defects_go_from_obvious_to_faint(generated: tuple[Path, float], defect_type: str) -> None:
    category, _ = generated
    contrasts = []
    for index in range(10):
        image = load_image(category / "test" / defect_type / f"{index:03d}.png")
        mask = load_image(category / "ground_truth" / defect_type / f"{index:03d}_mask.png")[..., 0] > 0
        contrasts.append(_defect_contrast(image, mask))
    strong, faint = np.mean(contrasts[:3]), np.mean(contrasts[-3:])
    assert strong > 20.0 and strong > 3 * faint, contrasts
    amplitudes = demo.defect_contrasts()
    assert np.all(np.diff(amplitudes) < 0) and amplitudes[-1] <= demo.TEXTURE_NOISE


def test_existing_complete_dataset_is_not_rewritten(generated: tuple[Path, float], monkeypatch) -> None:
    category, _ = generated
    before = {path: path.stat().st_mtime_ns for path in category.rglob("*")}

    def must_not_write(*args, **kwargs):
        raise AssertionError("the dataset was regenerated")

    monkeypatch.setattr(demo, "_write_tree", must_not_write)
    assert generate_demo_dataset(category.parent, seed=0) == category
    assert {path: path.stat().st_mtime_ns for path in category.rglob("*")} == before


def test_other_seed_replaces_dataset(tmp_path: Path, generated: tuple[Path, float]) -> None:
    category, _ = generated
    target = generate_demo_dataset(tmp_path, seed=1)
    first_good = Path("train") / "good" / "000.png"
    assert (target / first_good).read_bytes() != (category / first_good).read_bytes()
    stale_file = target / "stale.txt"
    stale_file.write_text("from the old version")
    marker = json.loads((target / demo.MARKER_NAME).read_text(encoding="utf-8"))
    (target / demo.MARKER_NAME).write_text(json.dumps({**marker, "version": 0}), encoding="utf-8")
    rebuilt = generate_demo_dataset(tmp_path, seed=1)  # outdated version → rebuilt
    assert rebuilt == target and not stale_file.exists()
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_CATEGORY]


def test_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / DEMO_CATEGORY).mkdir()
    (tmp_path / DEMO_CATEGORY / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not generated by inspection.demo"):
        generate_demo_dataset(tmp_path)
    assert (tmp_path / DEMO_CATEGORY / "mine.txt").read_text() == "user data"


def test_failed_generation_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def fail_halfway(folder: Path, seed: int) -> None:
        (folder / "train" / "good").mkdir(parents=True)
        (folder / "train" / "good" / "000.png").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(demo, "_write_tree", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        generate_demo_dataset(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_default_root_and_demo_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("INSPECTION_DATA_DIR", raising=False)
    assert default_demo_root() == Path.home() / ".cache" / "inspection" / "data"
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(tmp_path / "data"))
    assert default_demo_root() == tmp_path / "data"

    calls = []

    def fake_generate(root, seed=0):
        calls.append(Path(root))
        return Path(root) / DEMO_CATEGORY

    monkeypatch.setattr(demo, "generate_demo_dataset", fake_generate)
    assert demo_dataset() == tmp_path / "data" / "surface"
    assert demo_dataset(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "surface"
    assert calls == [tmp_path / "data", tmp_path / "elsewhere"]
