"""Datasets on disk: MVTec-AD layout or a plain folder of good/defect images.

Listing only reads directory entries (never image pixels), so opening a dataset of thousands of
files is fast; images and masks are read later, one at a time, by the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .images import IMAGE_EXTENSIONS, list_images, load_mask, read_image_info
from .protocol import ALIGNED, AlignmentProtocol, PlacedImage, Placement

GOOD = "good"
FOLDER_DEFECT_TYPE = "defect"
LAYOUT_MVTEC = "mvtec"
LAYOUT_FOLDER = "folder"

_EXPECTED_LAYOUTS = (
    "expected either the MVTec AD layout (CATEGORY/train/good/, CATEGORY/test/<type>/, optional "
    "CATEGORY/ground_truth/<type>/<stem>_mask.png) or a plain folder (good/, defect/, optional "
    "masks/ with <stem>_mask.png or <stem>.png)"
)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset with its label and, for defects, its ground-truth mask."""

    path: Path
    label: int  # 0 good, 1 defect
    defect_type: str  # "good" or the defect type folder name
    mask_path: Path | None  # None for good images, or a defect image without a mask
    split: str  # "train" | "test"
    placement: Placement | None = None  # how the dataset's protocol moves the image (None: as captured)

    @property
    def source(self) -> Path | PlacedImage:
        """What `fit` and `predict` are given: the file, or the file as the protocol moves it."""
        return self.path if self.placement is None else PlacedImage(self.path, self.placement)


@dataclass
class Dataset:
    """A category's train (good only) and test samples, in sorted, deterministic order."""

    root: Path  # the category folder
    category: str
    layout: str  # "mvtec" | "folder"
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    protocol: AlignmentProtocol = ALIGNED  # how its images (and masks) are moved before the model sees them

    def with_protocol(self, protocol: AlignmentProtocol) -> Dataset:
        """The same samples under `protocol`: each image's move drawn from its path inside the dataset."""

        def placed(sample: Sample) -> Sample:
            return replace(sample, placement=protocol.placement(sample.path.relative_to(self.root)))

        return replace(self, train=[placed(sample) for sample in self.train],
                       test=[placed(sample) for sample in self.test], protocol=protocol)

    def defect_types(self) -> list[str]:
        """Defect types present in the test split, sorted, without "good"."""
        return sorted({sample.defect_type for sample in self.test if sample.label == 1})

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and type, e.g. {"train": {"good": 60}, "test": {"good": 20, "hole": 10}}."""
        result: dict[str, dict[str, int]] = {"train": {GOOD: len(self.train)}, "test": {}}
        for sample in self.test:
            result["test"][sample.defect_type] = result["test"].get(sample.defect_type, 0) + 1
        result["test"] = dict(sorted(result["test"].items()))
        return result

    def has_masks(self) -> bool:
        """True when at least one test defect has a ground-truth mask."""
        return any(sample.label == 1 and sample.mask_path is not None for sample in self.test)


# --------------------------------------------------------------------------- helpers


def _subfolders(folder: Path) -> list[str]:
    """Names of the non-hidden subfolders of `folder`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _mask_index(mask_folder: Path) -> dict[str, Path]:
    """Map each possible image stem to its mask file, preferring <stem>_mask over <stem>, .png first.

    Built from one directory listing so that matching thousands of images costs no extra stats.
    """
    if not mask_folder.is_dir():
        return {}
    candidates: dict[str, tuple[tuple[int, int, str], Path]] = {}
    for mask_path in list_images(mask_folder):
        stem, suffix = mask_path.stem, mask_path.suffix.lower()
        extension_rank = 0 if suffix == ".png" else 1
        keys = [(stem, (1, extension_rank, mask_path.name))]
        if stem.endswith("_mask") and len(stem) > len("_mask"):
            keys.append((stem[: -len("_mask")], (0, extension_rank, mask_path.name)))
        for image_stem, rank in keys:
            if image_stem not in candidates or rank < candidates[image_stem][0]:
                candidates[image_stem] = (rank, mask_path)
    return {image_stem: path for image_stem, (_, path) in candidates.items()}


def _good_samples(paths: list[Path], split: str) -> list[Sample]:
    return [Sample(path, 0, GOOD, None, split) for path in paths]


def _defect_samples(paths: list[Path], defect_type: str, masks: dict[str, Path]) -> list[Sample]:
    return [Sample(path, 1, defect_type, masks.get(path.stem), "test") for path in paths]


def _sorted_test(samples: list[Sample]) -> list[Sample]:
    """Test order: by type, then file name."""
    return sorted(samples, key=lambda sample: (sample.defect_type, sample.path.name))


def _no_training_images(folder: Path) -> DatasetError:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    return DatasetError(f"{folder}: no training images found (expected image files: {extensions})")


def _open_mvtec(base: Path) -> Dataset:
    train_paths = list_images(base / "train" / GOOD)
    if not train_paths:
        raise _no_training_images(base / "train" / GOOD)
    test_folder = base / "test"
    test: list[Sample] = []
    if test_folder.is_dir():
        for defect_type in _subfolders(test_folder):
            image_paths = list_images(test_folder / defect_type)
            if defect_type == GOOD:
                test.extend(_good_samples(image_paths, "test"))
            else:
                masks = _mask_index(base / "ground_truth" / defect_type)
                test.extend(_defect_samples(image_paths, defect_type, masks))
    return Dataset(base, base.name, LAYOUT_MVTEC, _good_samples(train_paths, "train"), _sorted_test(test))


def _held_out_count(n_good: int, test_fraction: float) -> int:
    """How many good images go to test: the fraction, at least 1 (if ≥2 good), leaving ≥1 to train."""
    if n_good < 2 or test_fraction == 0:
        return 0
    return int(min(max(round(test_fraction * n_good), 1), n_good - 1))


def _open_folder(base: Path, test_fraction: float, seed: int) -> Dataset:
    good_paths = list_images(base / GOOD)  # sorted by name, so the permutation is reproducible
    if not good_paths:
        raise _no_training_images(base / GOOD)
    n_test = _held_out_count(len(good_paths), test_fraction)
    held_out = set(np.random.default_rng(seed).permutation(len(good_paths))[:n_test].tolist())
    train_paths = [path for index, path in enumerate(good_paths) if index not in held_out]
    test_good = [path for index, path in enumerate(good_paths) if index in held_out]
    defect_folder = base / FOLDER_DEFECT_TYPE
    defect_paths = list_images(defect_folder) if defect_folder.is_dir() else []
    test = _good_samples(test_good, "test") + _defect_samples(
        defect_paths, FOLDER_DEFECT_TYPE, _mask_index(base / "masks")
    )
    return Dataset(base, base.name, LAYOUT_FOLDER, _good_samples(train_paths, "train"), _sorted_test(test))


# --------------------------------------------------------------------------- public API


def list_categories(root: str | os.PathLike) -> list[str]:
    """MVTec-layout categories under `root`: sorted subfolders that contain train/good."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: dataset folder not found")
    return [name for name in _subfolders(root_path) if (root_path / name / "train" / GOOD).is_dir()]


def open_dataset(
    root: str | os.PathLike,
    category: str | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """List a dataset at `root/category` (or `root`), detecting the MVTec or plain-folder layout.

    Plain folders: a seeded `test_fraction` of good images (at least 1 when there are ≥2 and the
    fraction is > 0) joins all defects in test; the rest is train. Raises DatasetError.
    """
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: dataset folder not found")
    base = root_path
    if category is not None:
        base = root_path / category
        if not base.is_dir():
            found = list_categories(root_path)
            raise DatasetError(
                f"{base}: category {category!r} not found under {root_path}; "
                f"categories found: {', '.join(found) if found else 'none'}"
            )
    if (base / "train" / GOOD).is_dir():
        return _open_mvtec(base)
    if (base / GOOD).is_dir():
        return _open_folder(base, float(test_fraction), seed)
    if category is None:
        found = list_categories(root_path)
        if found:
            raise DatasetError(
                f"{root_path}: is a root of category folders ({', '.join(found)}); pass category=NAME"
            )
    raise DatasetError(f"{base}: unrecognised dataset layout; {_EXPECTED_LAYOUTS}")


def load_sample_mask(sample: Sample, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's ground truth as H×W bool; all False for good images and defects without a mask.

    The mask must have `shape` (default: the image's own size, read from its header); a mismatch
    raises DatasetError naming both files. A sample moved by a protocol gets its mask moved the same way.
    """
    expected = None
    if shape is not None:
        if len(shape) != 2:
            raise ValueError(f"shape must be (height, width), got {shape!r}")
        expected = (int(shape[0]), int(shape[1]))
    if sample.mask_path is None:
        if expected is None:
            info = read_image_info(sample.path)
            expected = (info["height"], info["width"])
        return np.zeros(expected, dtype=bool)
    mask = load_mask(sample.mask_path)
    if expected is None:
        info = read_image_info(sample.path)
        expected = (info["height"], info["width"])
    if mask.shape != expected:
        raise DatasetError(
            f"{sample.mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} (W×H) but image "
            f"{sample.path} needs {expected[1]}×{expected[0]}"
        )
    return mask if sample.placement is None else sample.placement.apply_mask(mask)
