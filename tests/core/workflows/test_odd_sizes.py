"""`predict` on images of odd sizes, as a user runs it: 1 × 1 px, 20 × 10000, 10000 × 20, 8 × 10000 and 9999 × 9999 —
an error row that states the limit, or a correct row with areas in the file's own pixels; never a traceback."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from app_testing import demo_image, train_small_model
from inspection.cli import main
from inspection.registry import load_model
from inspection.workflows.batch import CSV_NAME


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PatchCore at a shorter side of 64 px (aspect mode, deepest stride 16): it judges sides of 4 px and more."""
    return train_small_model(demo_root, tmp_path_factory.mktemp("odd-sizes") / "small.safetensors", resize=64,
                             crop=64)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / CSV_NAME, newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_predict_refuses_what_it_cannot_judge_and_reports_areas_in_the_files_pixels(
        small_model: Path, demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    need = load_model(small_model).preprocessing.min_side
    assert need == 4
    hole = np.asarray(Image.open(demo_image(demo_root, "hole", 0)).convert("L"))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(hole).save(folder / "hole.png")
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(folder / "one.png")
    sizes = {"narrow.png": (20, 10_000), "flat.png": (10_000, 20), "needle.png": (8, 10_000)}  # width × height
    for name, size in sizes.items():
        Image.fromarray(cv2.resize(hole, size, interpolation=cv2.INTER_AREA)).save(folder / name)
    # The hole at 9999 × 9999 px: decoded shrunk to 4096 px, scored as the 256 px original is.
    big = cv2.resize(hole, (9999, 9999), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(folder / "big.png"), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])

    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--model", str(small_model), str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert "scored 4 image(s)" in printed.out and "2 not scored" in printed.out
    rows = _rows(out)
    assert set(rows) == {"hole.png", "one.png", "narrow.png", "flat.png", "needle.png", "big.png"}

    # Too small, and too long and thin: one error row each, stating the limit; no score.
    one, needle = rows["one.png"], rows["needle.png"]
    assert one["error"] == (f"{folder / 'one.png'}: image is 1 × 1 px; this model needs at least 4 px on each side "
                            "(it works at 64 px on the shorter side, with its coarsest features 16 px apart: a smaller "
                            "side leaves some of them without a pixel of the image)")
    assert needle["error"].startswith(f"{folder / 'needle.png'}: image is 8 × 10000 px (1250:1); this model needs at "
                                      "least 4 px on each side once the longer side is shrunk to 4096 px")
    assert one["score"] == needle["score"] == one["verdict"] == one["largest_region_area"] == ""

    # 20 × 10000 and 10000 × 20 (8 px once shrunk to 4096: at least 4): scored whole — a working map of 64 × 32768
    # px, past cv2.remap's limit — with areas within the file.
    for name, (width, height) in [("narrow.png", sizes["narrow.png"]), ("flat.png", sizes["flat.png"])]:
        row = rows[name]
        assert row["error"] == "" and np.isfinite(float(row["score"]))
        # A strip squeezed out of a square part is no picture the model was trained on: it may well say so.
        assert row["verdict"] in ("good", "defect", "unlike")
        assert 0 <= int(row["largest_region_area"]) <= width * height
        assert Image.open(out / row["overlay"]).size == (round(width * 4096 / max(width, height)),
                                                         round(height * 4096 / max(width, height)))

    # 9999 × 9999: the same hole as the 256 px file, so the same region — in the file's own pixels.
    small, large = rows["hole.png"], rows["big.png"]
    assert small["verdict"] == large["verdict"] == "defect"
    expected = int(small["largest_region_area"]) * (9999 / hole.shape[0]) ** 2
    assert int(large["largest_region_area"]) == pytest.approx(expected, rel=0.05)
    assert int(large["largest_region_area"]) > 4096 ** 2 * 0.001  # not counted in the shrunk copy's pixels
    assert Image.open(out / large["overlay"]).size == (4096, 4096)


def test_predict_on_nothing_it_can_judge_is_one_error_line_and_exit_code_2(
        small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--model", str(small_model), str(tiny), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and error.count("\n") == 1 and "Traceback" not in error
    assert "could be scored" in error and CSV_NAME in error
    assert "image is 1 × 1 px; this model needs at least 4 px on each side" in _rows(out)[str(tiny)]["error"]


def test_a_model_given_an_image_it_cannot_judge_says_so_in_one_line(small_model: Path) -> None:
    """What the app's pages show (their `user_errors` turn the error into this one line)."""
    from inspection.errors import ImageSizeError, friendly_error

    with pytest.raises(ImageSizeError) as caught:
        load_model(small_model).predict([np.zeros((1, 1, 3), np.uint8)])
    assert friendly_error(caught.value).startswith("This model cannot judge this image: image is 1 × 1 px; this "
                                                   "model needs at least 4 px on each side")
