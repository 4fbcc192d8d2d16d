"""Bad input of every kind, generated: each case ends as one clear line (an error naming the file or value),
never a traceback, with the right exit code, and nothing written or lost.

Cases: every field of a model file's header mutated (missing, wrong type, NaN/inf, deep nesting), damaged
tensors, malicious pickles through every loader, bad images, bad datasets, special paths (pipes, link loops,
dangling links, unwritable destinations), and bad command-line arguments.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import pickle
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from conftest import FIXTURES, REPO
from inspection.cli import main
from inspection.data.datasets import open_dataset
from inspection.data.download import category_url
from inspection.data.images import list_images, load_image
from inspection.errors import (
    BackboneWeightsError,
    DatasetError,
    ImageLoadError,
    InspectionError,
    ModelFileError,
    ParameterError,
)
from inspection.model.modelfile import read_header, read_model_header, read_model_info
from inspection.registry import create_model, load_model
from inspection_app.library import list_models, scan_models

FIXTURE = FIXTURES / "patchcore_v0.1.0.safetensors"


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The CLI in this process: (exit code, stderr)."""
    try:
        code = main(["--quiet", *args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr


def write_with_header(path: Path, tensors: dict[str, torch.Tensor], header_json: str) -> Path:
    save_file(tensors, str(path), metadata={"inspection": header_json})
    return path


@pytest.fixture(scope="module")
def stored() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from inspection.model.modelfile import read_model_file

    return read_model_file(FIXTURE)


# ----------------------------------------------------------------------------------------------------------
# Model files: every header field mutated


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path to a field of a JSON value (lists: their first item, and the list itself)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], prefix + (0,))


def _mutate(header: dict, path: tuple, mutation: str) -> dict:
    mutated = copy.deepcopy(header)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if mutation == "missing":
        if isinstance(parent, list):
            parent.pop(key)
        else:
            del parent[key]
    else:
        parent[key] = {"string": "evil", "list": [1, 2], "object": {"x": 1}, "nan": float("nan"),
                      "inf": float("inf"), "null": None, "negative": -1}[mutation]
    return mutated


MUTATIONS = ("missing", "string", "list", "object", "nan", "inf", "null", "negative")


def test_every_mutated_header_field_is_loaded_or_refused_in_one_line(stored, tmp_path, capsys, demo_root):
    tensors, header = stored
    image = str(demo_root / "test" / "hole" / "000.png")
    cases = [(path, mutation) for path in _paths(header) for mutation in MUTATIONS]
    assert len(cases) > 300  # every field of the header, each mutated 8 ways
    outcomes = {"loaded": 0, "refused": 0}
    for index, (path, mutation) in enumerate(cases):
        model_path = write_with_header(tmp_path / f"m{index}.safetensors", tensors,
                                       json.dumps(_mutate(header, path, mutation), allow_nan=True))
        try:
            model = load_model(model_path)
        except InspectionError as error:  # ModelFileError, or e.g. weights named in it that are missing
            assert model_path.name in str(error) and "\n" not in str(error), (path, mutation, error)
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            prediction = model.predict([image])
            assert np.isfinite(prediction.raw_scores).all()
            # Whatever loads decides with finite thresholds: no verdict on NaN.
            assert np.isfinite([model.calibration.image_threshold, model.calibration.pixel_threshold]).all()
        # The CLI and the app's library never break on it either.
        code, stderr = run(capsys, "predict", "--model", str(model_path), image, "--out", str(tmp_path / "out"))
        assert code in (0, 2), (path, mutation)
        if code == 2:
            assert_one_line(stderr)
        capsys.readouterr()
        model_path.unlink()
    assert outcomes["refused"] > 200 and outcomes["loaded"] > 10  # ignored extras load; broken fields do not


@pytest.mark.parametrize("name, header_json", [
    ("a JSON list", "[1, 2, 3]"),
    ("a string", '"inspection-model"'),
    ("nested 200 000 levels", "[" * 200_000 + "]" * 200_000),
    ("nested objects in info", None),
    ("not JSON", "{'format': 'inspection-model'"),
])
def test_header_that_is_not_an_object_is_refused(stored, tmp_path, name, header_json, capsys):
    tensors, header = stored
    if header_json is None:
        deep = header_json = json.dumps({**header, "info": "X"}).replace('"X"', "[" * 100_000 + "]" * 100_000)
        assert len(deep) > 200_000
    path = write_with_header(tmp_path / "bad.safetensors", tensors, header_json)
    for reader in (read_header, read_model_header, read_model_info, load_model):
        with pytest.raises(ModelFileError, match="bad.safetensors"):
            reader(path)
    entries, problems = list_models(tmp_path)
    assert entries == [] and len(problems) == 1 and "bad.safetensors: unusable" in problems[0]
    code, stderr = run(capsys, "evaluate", "--model", str(path), "--data", str(tmp_path))
    assert code == 2
    assert_one_line(stderr)


@pytest.mark.parametrize("change, message", [
    (lambda bank: bank.fill_(float("nan")), "NaN or infinite"),
    (lambda bank: bank.fill_(float("inf")), "NaN or infinite"),
    (lambda bank: bank.to(torch.int64), "expected floating-point"),
    (lambda bank: bank[:, :10], "does not fit"),
    (lambda bank: bank[None], "3 dimensions"),
    (lambda bank: bank[:0], "does not fit"),
])
def test_damaged_tensors_are_refused(stored, tmp_path, change, message):
    tensors, header = stored
    damaged = {"memory_bank": change(tensors["memory_bank"].clone()).contiguous()}
    path = write_with_header(tmp_path / "damaged.safetensors", damaged, json.dumps(header))
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_a_model_without_its_tensors_is_refused(stored, tmp_path):
    _, header = stored
    path = write_with_header(tmp_path / "empty.safetensors", {"other": torch.zeros(2)}, json.dumps(header))
    with pytest.raises(ModelFileError, match="lack 'memory_bank'"):
        load_model(path)


def test_truncated_or_random_model_files(tmp_path, capsys):
    raw = FIXTURE.read_bytes()
    for name, data in [("truncated", raw[: len(raw) // 2]), ("header only", raw[:200]), ("empty", b""),
                       ("huge length", struct.pack("<Q", 2**62) + b"{}"), ("random", os.urandom(5000))]:
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match=path.name):
            load_model(path)
        assert scan_models(tmp_path)[0] == []
        code, stderr = run(capsys, "predict", "--model", str(path), str(tmp_path), "--out", str(tmp_path / "o"))
        assert code == 2
        assert_one_line(stderr)
        path.unlink()


# ----------------------------------------------------------------------------------------------------------
# Malicious pickles through every loader


class _CreatesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": _CreatesAFile(marker)}))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_a_malicious_pickle_runs_through_no_loader(tmp_path, suffix, capsys, demo_root, monkeypatch):
    marker = tmp_path / "pwned"
    evil = _evil_pickle(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(ModelFileError):
        load_model(evil)
    with pytest.raises(ModelFileError):
        read_model_header(evil)
    with pytest.raises(BackboneWeightsError, match="cannot read weights file"):
        create_model("patchcore", weights=str(evil), crop=64, resize=64).fit(
            [sample for sample in sorted((demo_root / "train" / "good").iterdir())[:12]])
    code, stderr = run(capsys, "fit", "--method", "patchcore", "--data", str(demo_root), "--weights", str(evil),
                       "--out", str(tmp_path / "m"), "--crop", "64", "--resize", "64")
    assert code == 2
    assert_one_line(stderr)
    code, stderr = run(capsys, "predict", "--model", str(evil), str(demo_root / "test" / "good"), "--out",
                       str(tmp_path / "o"))
    assert code == 2
    assert_one_line(stderr)
    # The app's library lists it as unusable; the Home page stays usable.
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(evil, models / "evil.safetensors")
    assert [item.path.name for item in scan_models(models)[1]] == ["evil.safetensors"]
    monkeypatch.setenv("INSPECTION_MODELS_DIR", str(models))
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(demo_root.parent))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# Images


def _png(array: np.ndarray, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _bad_images() -> dict[str, bytes]:
    good = _png(np.zeros((32, 32, 3), np.uint8))
    rng = np.random.default_rng(0)
    bomb = bytearray(good)
    bomb[16:24] = struct.pack(">II", 200_000, 200_000)  # IHDR width and height (CRC left wrong on purpose)
    return {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "random.png": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "text.jpg": b"this is not an image",
        "header_only.png": good[:33],
        "bomb.png": bytes(bomb),
        "zeros.bmp": bytes(100),
        "html.tif": b"<html><body>not a tiff</body></html>",
    }


@pytest.mark.parametrize("name", list(_bad_images()))
def test_bad_image_files_are_one_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_bad_images()[name])
    with pytest.raises(ImageLoadError, match=name) as raised:
        load_image(path)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("array", [
    np.zeros((1, 1), np.uint8), np.zeros((1, 5000), np.uint8), np.full((40, 30), 65535, np.uint16),
    np.zeros((20, 20, 4), np.uint8), np.zeros((9, 11, 3), np.uint8)])
def test_odd_but_valid_images_are_read(tmp_path, array):
    path = tmp_path / "odd.png"
    path.write_bytes(_png(array))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape[2] == 3


def test_a_folder_of_bad_files_and_special_entries_scores_the_good_ones(tmp_path, capsys, demo_root):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name, data in _bad_images().items():
        (folder / name).write_bytes(data)
    shutil.copy(demo_root / "test" / "good" / "000.png", folder / "good.png")
    shutil.copy(demo_root / "test" / "hole" / "000.png", folder / "=1+2.png")
    os.mkfifo(folder / "pipe.png")
    os.symlink(folder / "loop.png", folder / "loop.png")
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    (folder / "sub.png").mkdir()  # a folder named like an image is not an image
    out = tmp_path / "out"
    code, stderr = run(capsys, "predict", "--model", str(FIXTURE), str(folder), "/proc/self/status", "--out",
                       str(out))
    assert code == 0, stderr
    rows = {row["file"]: row for row in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    assert rows["good.png"]["verdict"] in ("good", "defect") and rows["good.png"]["error"] == ""
    assert "'=1+2.png" in rows  # a formula in a file name is neutralised
    for name in [*_bad_images(), "pipe.png", "loop.png", "dangling.png", "/proc/self/status"]:
        assert rows[name]["error"] and rows[name]["score"] == "", name
    assert "sub.png" not in rows
    assert "not a regular file" in rows["pipe.png"]["error"] and "dangling" in rows["dangling.png"]["error"]


def test_a_folder_of_nothing_but_bad_files_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"nope")
    code, stderr = run(capsys, "predict", "--model", str(FIXTURE), str(tmp_path / "in"), "--out",
                       str(tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr)
    assert (tmp_path / "out" / "predictions.csv").is_file()  # the reasons are written


# ----------------------------------------------------------------------------------------------------------
# Datasets and paths for fitting


def _dataset(root: Path, goods: int = 12) -> Path:
    (root / "train" / "good").mkdir(parents=True)
    for index in range(goods):
        (root / "train" / "good" / f"{index:03d}.png").write_bytes(_png(np.full((40, 40, 3), 100 + index,
                                                                                np.uint8)))
    return root


@pytest.mark.parametrize("case", ["missing", "empty folder", "empty train", "a file", "no layout",
                                  "mask of another size", "link loop in train", "pipe in train",
                                  "dangling link in train", "corrupt image in train"])
def test_bad_datasets_fail_fit_in_one_line_and_write_nothing(tmp_path, capsys, case):
    root = tmp_path / "data"
    if case == "empty folder":
        root.mkdir()
    elif case == "empty train":
        (root / "train" / "good").mkdir(parents=True)
    elif case == "a file":
        root.write_text("not a folder")
    elif case == "no layout":
        (root / "images").mkdir(parents=True)
    elif case != "missing":
        _dataset(root)
        good = root / "train" / "good"
        if case == "mask of another size":
            (root / "test" / "hole").mkdir(parents=True)
            (root / "test" / "hole" / "000.png").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))
            (root / "ground_truth" / "hole").mkdir(parents=True)
            (root / "ground_truth" / "hole" / "000_mask.png").write_bytes(_png(np.zeros((10, 10), np.uint8)))
        elif case == "link loop in train":
            os.symlink(good / "zz.png", good / "zz.png")
        elif case == "pipe in train":
            os.mkfifo(good / "zz.png")
        elif case == "dangling link in train":
            os.symlink(good / "nothing.png", good / "zz.png")
        elif case == "corrupt image in train":
            (good / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "models" / "m"
    code, stderr = run(capsys, "fit", "--method", "padim", "--data", str(root), "--out", str(out), "--crop", "32",
                       "--resize", "32", "--weights", "random", "--n-features", "10")
    assert code == 2, stderr
    assert_one_line(stderr)
    if case.endswith("in train"):
        assert "zz.png" in stderr  # the file is named
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("destination", ["/proc/inspection-model", "/sys/m", "existing folder", "file as parent"])
def test_unwritable_destinations_fail_fit_before_any_work(tmp_path, capsys, destination, monkeypatch):
    root = _dataset(tmp_path / "data")
    if destination == "existing folder":  # --out m writes m.safetensors: here a folder of that name is in the way
        (tmp_path / "folder.safetensors").mkdir()
        (tmp_path / "folder.safetensors" / "keep.txt").write_text("mine")
        destination = str(tmp_path / "folder")
    elif destination == "file as parent":
        (tmp_path / "afile").write_text("mine")
        destination = str(tmp_path / "afile" / "m")

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was opened before the destination was checked")

    monkeypatch.setattr("inspection.workflows.train.open_dataset", no_dataset)
    code, stderr = run(capsys, "fit", "--method", "padim", "--data", str(root), "--out", destination, "--weights",
                       "random")
    assert code == 2
    assert_one_line(stderr)
    assert "Cannot write the output" in stderr
    if (tmp_path / "folder.safetensors").exists():
        assert [path.name for path in (tmp_path / "folder.safetensors").iterdir()] == ["keep.txt"]
    if (tmp_path / "afile").exists():
        assert (tmp_path / "afile").read_text() == "mine"


def test_predict_and_evaluate_refuse_unwritable_outputs_and_keep_what_is_there(tmp_path, capsys, demo_root):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    code, stderr = run(capsys, "predict", "--model", str(FIXTURE), str(demo_root / "test" / "good"), "--out",
                       str(existing))
    assert code == 2 and existing.read_text() == "mine"
    assert_one_line(stderr)
    code, stderr = run(capsys, "evaluate", "--model", str(FIXTURE), "--data", str(demo_root), "--json",
                       "/proc/inspection.json")
    assert code == 2
    assert_one_line(stderr)
    code, stderr = run(capsys, "bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories",
                       "surface", "--out", str(existing))
    assert code == 2 and existing.read_text() == "mine"
    assert_one_line(stderr)


def test_a_loop_or_dangling_link_in_a_dataset_folder_is_listed_to_be_named(tmp_path):
    root = _dataset(tmp_path / "data", goods=3)
    os.symlink(root / "train" / "good" / "x.png", root / "train" / "good" / "x.png")
    dataset = open_dataset(root)
    assert [sample.path.name for sample in dataset.train] == ["000.png", "001.png", "002.png", "x.png"]
    assert len(list_images(root / "train" / "good")) == 4


# ----------------------------------------------------------------------------------------------------------
# Command-line arguments


@pytest.mark.parametrize("arguments, expected", [
    (["predict", "--batch-size", "-1"], "'batch_size' must be >= 1"),
    (["predict", "--batch-size", "0"], "'batch_size' must be >= 1"),
    (["predict", "--batch-size", "many"], "'batch_size' must be of type int"),
    (["predict", "--device", "tpu"], "must be one of ['auto', 'cpu', 'cuda']"),
    (["fit", "--coreset-ratio", "nan"], "'coreset_ratio' must be of type float"),
    (["fit", "--coreset-ratio", "inf"], "'coreset_ratio' must be of type float"),
    (["fit", "--coreset-ratio", "-1"], "'coreset_ratio' must be >= "),
    (["fit", "--neighbourhood", "4"], "must be odd"),
    (["fit", "--crop", "1e9"], "'crop' must be of type int"),
    (["fit", "--layers", "blocks.99"], "has no layer"),
    (["fit", "--resize-mode", "center_crop", "--resize", "64", "--crop", "128"], "must be at least 'crop'"),
    (["fit", "--method", "nonsense"], "invalid choice"),
    (["fit", "--no-such-option", "1"], "unrecognized arguments"),
    (["bench", "--set", "evil=1"], "unknown parameter(s) ['evil']"),
    (["bench", "--set", "nonsense"], "is not NAME=VALUE"),
    (["bench", "--large-image", "-5"], "'large_image' must be >= 16"),
    ([], "the following arguments are required"),
])
def test_bad_arguments_are_one_line(arguments, expected, tmp_path, capsys, demo_root):
    command = arguments[0] if arguments else None
    base = {"predict": ["predict", "--model", str(FIXTURE), str(demo_root / "test" / "good" / "000.png"),
                        "--out", str(tmp_path / "o")],
            "fit": ["fit", "--method", "patchcore", "--data", str(demo_root), "--out", str(tmp_path / "m")],
            "bench": ["bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories", "surface",
                      "--out", str(tmp_path / "b")]}.get(command, [])
    arguments = base + arguments[1:] if command != "fit" or "--method" not in arguments else \
        ["fit", "--data", str(demo_root), "--out", str(tmp_path / "m")] + arguments[1:]
    code, stderr = run(capsys, *arguments)
    assert code == 2
    assert_one_line(stderr)
    assert expected in stderr
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "b").exists()


def test_only_web_addresses_are_downloaded():
    for url in ("file:///etc/passwd", "ftp://example.com/bottle.tar.xz", "/etc/passwd", "https://"):
        with pytest.raises(ParameterError, match="only http:// and https://"):
            category_url("bottle", url)
    assert category_url("bottle", "https://example.com/{category}.tar.xz") == "https://example.com/bottle.tar.xz"


def test_a_dataset_error_names_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nothing")):
        open_dataset(tmp_path / "nothing")
