"""The bench's backbone × input-side sweep: the side reaches the backbone in every resize mode, every grid point
runs, and the sweep's table and plot are written from the measured rows."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import run_cli
from inspection.bench.sweep import expand_grid, row_side, run_variant, side_settings, sweep_table
from inspection.data.preprocess import Preprocessing
from inspection.results.image import ImageResult


def _seen_side(mode: str, side: int) -> int:
    """The shorter side of the working image (one tile in tiles mode) of a 300×500 image under side_settings."""
    settings = {key: int(value) for key, value in side_settings(mode, side).items()}
    geometry = Preprocessing(mode=mode, **settings).geometry(300, 500)
    if mode == "tiles":
        return settings["crop"]
    return min(geometry.height, geometry.width)


def test_the_side_is_what_the_backbone_sees_in_every_mode():
    for mode in ("center_crop", "full", "aspect", "tiles"):
        for side in (128, 160, 256):
            assert _seen_side(mode, side) == side, (mode, side)
    assert side_settings("center_crop", 224) == {"resize": "256", "crop": "224"}  # the default's margin
    assert side_settings("tiles", 160, resize=320) == {"crop": "160", "resize": "320"}  # the image keeps its side
    assert side_settings("tiles", 448, resize=320) == {"crop": "448", "resize": "448"}  # … unless a tile is larger


def test_the_grid_runs_every_backbone_at_every_side_and_names_them():
    grid = expand_grid({"coreset_ratio": "0.05"}, "aspect", ["a", "b"], [128, 192])
    assert [(label["backbone"], label["side"]) for _, label in grid] == \
        [("a", "128"), ("a", "192"), ("b", "128"), ("b", "192")]
    assert all(settings["coreset_ratio"] == "0.05" and settings["resize"] == label["side"] for settings, label in grid)
    assert expand_grid({"x": "1"}, "full", [], []) == [({"x": "1"}, {"x": "1"})]  # no grid: the spec alone


def test_the_table_comes_from_the_rows():
    rows = [{"category": "c", "method": "padim", "backbone": "mobilenet_v2", "side": side,
             "preprocessing": {"mode": "full", "resize": side, "crop": side}, "image_auroc": 0.9, "pixel_auroc": 0.8,
             "aupro": 0.7, "predict_ms_per_image": 12.5, "predict_ms_per_image_batch16": 5.0, "fit_seconds": 3.0,
             "peak_memory_mib": 900.0} for side in (160, 128)]
    table = sweep_table(rows).splitlines()
    assert len(table) == 4 and "| c | padim | mobilenet_v2 | 128 | 3.5 |" in table[2]  # sorted by side
    assert row_side(rows[0]) == 160
    # MobileNetV2 at 224 is about 300 M mult-adds; at 128 about a third of that.
    assert 80 <= int(table[2].split("|")[6]) <= 110


def test_bench_sweep_runs_each_point_and_writes_table_and_plot(demo_root, tmp_path):
    out = tmp_path / "sweep"
    completed = run_cli("bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories", "surface",
                        "--out", str(out), "--backbones", "efficientnet_lite0", "--sides", "64", "96")
    assert completed.returncode == 0, completed.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [(row["side"], row["preprocessing"]["crop"]) for row in rows] == [(64, 64), (96, 96)]
    assert [row["label"] for row in rows] == ["padim (backbone=efficientnet_lite0, side=64)",
                                              "padim (backbone=efficientnet_lite0, side=96)"]
    assert (out / "sweep.md").read_text().count("| surface | padim | efficientnet_lite0 |") == 2
    assert Image.open(out / "sweep.png").size[0] > 600


def test_the_legend_mentions_hatching_only_when_something_was_not_inspected():
    heatmap = np.zeros((4, 4))
    result = ImageResult("x", np.zeros((4, 4, 3), np.uint8), 0.1, 0.1, False, heatmap, [], [], None)
    assert result.fully_inspected
    heatmap[0, 0] = np.nan
    assert not result.fully_inspected


def test_two_variants_of_one_method_stay_apart():
    rows = [{"category": "c", "method": "patchcore", "label": label, "backbone": "efficientnet_lite0", "side": 192,
             "preprocessing": {"mode": "aspect", "resize": 192, "crop": 192}, "image_auroc": 0.9, "pixel_auroc": 0.8,
             "aupro": 0.7, "predict_ms_per_image": 12.5, "predict_ms_per_image_batch16": 5.0, "fit_seconds": 3.0,
             "peak_memory_mib": 900.0} for label in ("patchcore (side=192)", "patchcore (layers=16,32, side=192)")]
    assert [run_variant(row) for row in rows] == ["patchcore", "patchcore (layers=16,32)"]
    assert run_variant({"method": "padim", "label": "padim (backbone=b, side=64)"}) == "padim"
    table = sweep_table(rows)
    assert "| c | patchcore | efficientnet_lite0 | 192 |" in table
    assert "| c | patchcore (layers=16,32) | efficientnet_lite0 | 192 |" in table
