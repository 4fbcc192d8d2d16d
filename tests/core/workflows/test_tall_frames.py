"""Tall frames as a line camera gives them (KolektorSDD, 500 × ~1250 px grayscale): frames of other sizes than the
training frames, a frame ten times taller, the same frame as an 8-bit and a 16-bit grayscale file — a correct
result or a clear message, never a traceback, with the PatchCore a new user gets (its defaults, real weights)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from inspection.data.images import load_image
from inspection.methods.patchcore import PatchCore
from inspection.results.image import DISPLAY_MAX_SIDE

CATEGORY = "ksdd/commutator"


@pytest.fixture(scope="module")
def ksdd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """PatchCore with its defaults fitted on 16 real good frames (enough to score frames, not to measure accuracy:
    that is bench/ksdd's job), saved; and the folder of the test frames."""
    from conftest import require_shared

    root = require_shared() / "data" / CATEGORY
    train = sorted((root / "train" / "good").glob("*.jpg"))[:16]
    model = PatchCore(min_holdout=4, batch_size=4).fit([load_image(path) for path in train])
    path = model.save(tmp_path_factory.mktemp("ksdd-model") / "ksdd.safetensors")
    return {"model": model, "path": path, "root": root}


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_an_8_bit_and_a_16_bit_gray_file_of_one_frame_score_alike(ksdd: dict, tmp_path: Path) -> None:
    frame = _gray(ksdd["root"] / "test" / "crack" / "kos29_Part0.jpg")
    eight, sixteen = tmp_path / "frame8.png", tmp_path / "frame16.png"
    Image.fromarray(frame).save(eight)
    Image.fromarray(frame.astype(np.uint16) * 257).save(sixteen)  # the full 16-bit range, the same picture
    assert Image.open(sixteen).mode.startswith("I;16")
    prediction = ksdd["model"].predict([eight, sixteen])
    assert prediction.raw_scores[0] == pytest.approx(prediction.raw_scores[1], rel=1e-3)
    for index in range(2):
        assert prediction.map_on_original(index).shape == frame.shape


def test_frames_of_other_sizes_and_one_ten_times_taller_are_scored_whole(ksdd: dict, tmp_path: Path) -> None:
    """predict, as a user runs it, on a folder of frames smaller, larger and ten times taller than the training
    frames: every file gets a score and an overlay of its own size; the tall frame is seen at the model's working
    size (shorter side 256), not squeezed, and the command says nothing but its result."""
    frame = _gray(ksdd["root"] / "test" / "crack" / "kos29_Part0.jpg")
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = {"smaller.png": (320, 790), "larger.png": (750, 1850)}
    for name, (width, height) in sizes.items():
        Image.fromarray(frame).resize((width, height), Image.BILINEAR).save(folder / name)
    tall = np.concatenate([_gray(path) for path in sorted((ksdd["root"] / "test" / "good").glob("*.jpg"))[:10]])
    tall = tall[:, :500]
    Image.fromarray(tall).save(folder / "tall.png")
    sizes["tall.png"] = (tall.shape[1], tall.shape[0])
    assert tall.shape[0] >= 10 * 1235

    out = tmp_path / "out"
    result = run_cli("predict", "--model", str(ksdd["path"]), "--out", str(out), str(folder))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with open(out / "predictions.csv", newline="") as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert set(rows) == set(sizes)
    for name, (width, height) in sizes.items():
        assert np.isfinite(float(rows[name]["score"])), rows[name]
        overlay = Path(rows[name]["overlay"])
        drawn = Image.open(overlay if overlay.is_absolute() else out / overlay).size
        # The overlay is the original, shrunk (aspect kept) only where a side passes the display bound.
        shrink = min(1.0, DISPLAY_MAX_SIDE / max(width, height))
        assert drawn == pytest.approx((width * shrink, height * shrink), abs=1), (name, drawn)

    prediction = ksdd["model"].predict([folder / "tall.png"])
    geometry = prediction.geometries[0]
    assert min(geometry.resized_height, geometry.resized_width) == 256
    assert geometry.resized_height / geometry.resized_width == pytest.approx(tall.shape[0] / tall.shape[1], rel=0.02)
    assert geometry.inspected_fraction == 1.0
