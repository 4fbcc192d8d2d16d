"""Scoring on Ray (`predict --engine ray`): a local 2-CPU Ray gives exactly the local engine's results, resumes
as it does, and images named by URI read as their paths do."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from app_testing import demo_image, train_small_model
from inspection.cli import main
from inspection.errors import ParameterError
from inspection.registry import load_model
from inspection.workflows.batch import CSV_NAME, PARQUET_NAME, collect_inputs, score_files
from inspection.workflows.scale_out import RayEngine


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "small.safetensors")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def image_folder(demo_root: Path, folder: Path, goods: int = 3, holes: int = 3) -> Path:
    folder.mkdir(parents=True)
    for index in range(goods):
        shutil.copyfile(demo_image(demo_root, "good", index), folder / f"good_{index}.png")
    for index in range(holes):
        shutil.copyfile(demo_image(demo_root, "hole", index), folder / f"hole_{index}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_ray_gives_exactly_the_local_results(small_model: Path, demo_root: Path, tmp_path: Path,
                                             local_ray: None) -> None:
    folder = image_folder(demo_root, tmp_path / "in")
    model, files = load_model(small_model), collect_inputs([folder])
    # The actors get one CPU each, so one torch thread: so does the local run here (another thread count sums the
    # floats in another order, a difference in the 7th digit).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = score_files(model, files, tmp_path / "local", batch_size=2)
    finally:
        torch.set_num_threads(threads)
    engine = RayEngine(small_model, actors=2)
    remote = score_files(model, files, tmp_path / "ray", batch_size=2, engine=engine)
    assert engine.description == "Ray: 2 actor(s), 1 CPU each"
    assert (remote.scored, remote.flagged, remote.failed) == (local.scored, local.flagged, local.failed) == (6, 3, 1)
    # The very same scores (the same chunks through the same code), and the same CSV to the last character:
    # files, scores, verdicts, regions, overlay names, the unreadable file.
    assert [row.get("raw_score") for row in remote.rows] == [row.get("raw_score") for row in local.rows]
    assert (tmp_path / "ray" / CSV_NAME).read_text() == (tmp_path / "local" / CSV_NAME).read_text()
    overlays = sorted(path.name for path in (tmp_path / "local").glob("*.png"))
    assert len(overlays) == 6 and overlays == sorted(path.name for path in (tmp_path / "ray").glob("*.png"))
    for name in overlays:  # the same pictures, drawn by the actors (another thread count may move a colour by a
        # few levels where a map value sits on a rounding edge)
        drawn = np.asarray(Image.open(tmp_path / "ray" / name), dtype=np.int16)
        here = np.asarray(Image.open(tmp_path / "local" / name), dtype=np.int16)
        assert drawn.shape == here.shape and np.abs(drawn - here).max() <= 4 and (drawn != here).mean() < 0.01
    engine.shutdown()
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_ray_resumes_like_the_local_engine(small_model: Path, demo_root: Path, tmp_path: Path,
                                           local_ray: None) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in", goods=2, holes=1), tmp_path / "out"
    model = load_model(small_model)
    first = score_files(model, collect_inputs([folder]), out, batch_size=2, engine=RayEngine(small_model))
    assert (first.scored, first.skipped) == (3, 0)
    shutil.copyfile(demo_image(demo_root, "hole", 4), folder / "new.png")
    again = score_files(model, collect_inputs([folder]), out, batch_size=2, engine=RayEngine(small_model))
    assert (again.scored, again.skipped) == (4, 3)  # only the new file was sent to the actors
    local = score_files(model, collect_inputs([folder]), tmp_path / "local", batch_size=2)
    # Other chunks (only the new file went out) than a fresh local run's: the same scores up to float rounding.
    assert [row.get("raw_score", 0.0) for row in again.rows] == pytest.approx(
        [row.get("raw_score", 0.0) for row in local.rows], rel=1e-5)


def test_the_command_line_on_ray_writes_csv_and_parquet(small_model: Path, demo_root: Path, tmp_path: Path,
                                                        local_ray: None, capsys: pytest.CaptureFixture) -> None:
    import pyarrow.parquet as pq

    folder = image_folder(demo_root, tmp_path / "in", goods=2, holes=2)
    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--model", str(small_model), str(folder), "--out", str(out),
                 "--engine", "ray", "--actors", "2", "--parquet", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("scored 4 image(s) (Ray: 2 actor(s), 1 CPU each): 2 defect(s)")
    table = pq.read_table(out / PARQUET_NAME).to_pylist()
    assert [row["file"] for row in table] == ["broken.png", "good_0.png", "good_1.png", "hole_0.png", "hole_1.png"]
    assert table[0]["score"] is None and "broken.png" in table[0]["error"]
    assert [row["verdict"] for row in table[1:]] == ["good", "good", "defect", "defect"]
    assert all(isinstance(row["raw_score"], float) for row in table[1:])


def test_images_named_by_uri_read_as_their_paths(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = image_folder(demo_root, tmp_path / "in", goods=2, holes=1)
    model = load_model(small_model)
    by_path = score_files(model, collect_inputs([folder]), tmp_path / "paths", batch_size=4)
    uris = collect_inputs([folder.as_uri()])
    assert [name for _, name in uris] == ["broken.png", "good_0.png", "good_1.png", "hole_0.png"]
    by_uri = score_files(model, uris, tmp_path / "uris", batch_size=4)
    assert [(row["file"], row.get("raw_score"), row.get("verdict")) for row in by_uri.rows] == \
        [(row["file"], row.get("raw_score"), row.get("verdict")) for row in by_path.rows]
    assert "broken.png" in by_uri.rows[0]["error"]
    again = score_files(model, uris, tmp_path / "uris", batch_size=4)
    assert again.skipped == 3  # URIs are recognised on a rerun (the unreadable one is tried again)
    with pytest.raises(ParameterError, match="not found"):
        collect_inputs([(tmp_path / "nowhere").as_uri()])


def test_ray_options_are_checked_before_any_work(small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--model", str(small_model), str(tmp_path), "--out", str(tmp_path / "o"),
                 "--actors", "2"]) == 2
    assert "--address and --actors are options of --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the optional extra
    with pytest.raises(ParameterError, match=r'pip install "inspection\[ray\]"'):
        RayEngine(small_model)
