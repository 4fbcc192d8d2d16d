"""The command line, run as a user runs it: fit, evaluate, predict, bench, methods, and its error messages."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from inspection.bench.run import markdown_table, parse_settings
from inspection.cli import main


@pytest.fixture(scope="module")
def demo_model(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "demo"
    completed = run_cli("fit", "--method", "patchcore", "--data", str(demo_root.parent), "--category", "surface",
                        "--coreset-ratio", "0.02", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    assert "image_auroc" in completed.stdout
    return out.with_suffix(".safetensors")


def test_fit_writes_one_model_file_with_its_settings(demo_model):
    from inspection.model.modelfile import read_model_info

    header = read_model_info(demo_model)
    assert header["method"] == "patchcore" and header["params"]["coreset_ratio"] == 0.02
    assert header["info"]["metrics"]["n_test"] == 50


def test_evaluate_writes_the_json_metrics(demo_model, demo_root, tmp_path):
    out = tmp_path / "eval.json"
    completed = run_cli("evaluate", "--model", str(demo_model), "--data", str(demo_root.parent), "--category",
                        "surface", "--json", str(out))
    assert completed.returncode == 0, completed.stderr
    result = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "n_test", "predict_ms_per_image", "decode_ms_per_image"):
        assert key in result
    assert 0.5 < result["image_auroc"] <= 1 and result["n_test"] == 50 and len(result["scores"]) == 50


def test_predict_scores_files_and_folders_and_reports_unreadable_ones(demo_model, demo_root, tmp_path):
    inputs = tmp_path / "incoming"
    inputs.mkdir()
    for source in [demo_root / "test" / "good" / "000.png", demo_root / "test" / "hole" / "000.png"]:
        (inputs / f"{source.parent.name}.png").write_bytes(source.read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((300, 200), 90, np.uint8)).save(gray)
    out = tmp_path / "out"
    completed = run_cli("predict", "--model", str(demo_model), str(inputs), str(gray), "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    rows = {Path(row["file"]).name: row for row in csv.DictReader(open(out / "predictions.csv"))}
    assert set(rows) == {"good.png", "hole.png", "corrupt.png", "gray.png"}
    assert "corrupt.png" in rows["corrupt.png"]["error"] and rows["corrupt.png"]["score"] == ""
    assert rows["hole.png"]["verdict"] == "defect" and rows["good.png"]["verdict"] == "good"
    assert float(rows["hole.png"]["score"]) > float(rows["good.png"]["score"])
    overlay = np.asarray(Image.open(out / "gray.png"))
    assert overlay.shape == (300, 200, 3)  # drawn on the original image, at its own size


def test_user_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["fit", "--method", "patchcore", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "Traceback" not in error
    assert main(["predict", "--model", str(tmp_path / "missing.safetensors"), str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fit", "--method", "padim", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--coreset-ratio", "0.1"]) == 2


def test_parameter_not_applicable_to_the_method(demo_root, capsys):
    assert main(["fit", "--method", "padim", "--data", str(demo_root), "--out", "/tmp/never",
                 "--coreset-ratio", "0.1"]) == 2
    assert "do not apply to method 'padim'" in capsys.readouterr().err


def test_methods_lists_the_registry(capsys):
    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"patchcore", "padim"} <= set(listing["methods"])
    assert "efficientnet_lite0" in listing["backbones"]


def test_bench_writes_json_and_markdown(demo_root, tmp_path):
    out = tmp_path / "bench"
    completed = run_cli("bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories", "surface",
                        "--out", str(out), "--set", "surface:crop=128", "resize=144")
    assert completed.returncode == 0, completed.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 1 and results[0]["preprocessing"]["crop"] == 128
    for key in ("image_auroc", "pixel_auroc", "aupro", "fit_seconds", "predict_ms_per_image", "peak_memory_mib",
                "device"):
        assert key in results[0]
    # PaDiM's learned tensors: a mean and an inverse covariance per position.
    assert set(results[0]["learned_shapes"]) >= {"mean"}
    table = (out / "results.md").read_text()
    assert table.startswith("| method | category |") and "| padim | surface |" in table
    # Each defect type against the good images, in the JSON and in a table of its own.
    assert set(results[0]["by_type"]) == {"hole", "scratch", "stain"}
    assert all(0.0 <= metrics["pixel_auroc"] <= 1.0 for metrics in results[0]["by_type"].values())
    assert "| padim | surface | stain |" in table


def test_settings_scope_by_category():
    assert parse_settings(["a=1", "tile:b=2", "bottle:b=3"], "tile") == {"a": "1", "b": "2"}
    with pytest.raises(ValueError):
        parse_settings(["nonsense"], "tile")
    assert "| x | y |" not in markdown_table([], {"date": "d", "inspection": "v", "torch": "t", "cpu_threads": 2,
                                                  "machine": "m"})


def test_a_model_is_found_by_the_path_given_to_fit(demo_model, demo_root, tmp_path):
    """`fit --out models/demo` writes models/demo.safetensors; `--model models/demo` finds it."""
    without_suffix = demo_model.with_suffix("")
    completed = run_cli("predict", "--model", str(without_suffix), str(demo_root / "test" / "good" / "000.png"),
                        "--out", str(tmp_path / "out"))
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_numeric_options_are_checked_by_their_declaration(tmp_path, capsys):
    assert main(["fit", "--method", "patchcore", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--neighbourhood", "4"]) == 2
    assert "'neighbourhood' must be odd" in capsys.readouterr().err
    assert main(["fit", "--method", "patchcore", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--device", "tpu"]) == 2
    assert "must be one of ['auto', 'cpu', 'cuda']" in capsys.readouterr().err


def test_the_installed_console_command():
    """`pip install -e .` (the README's commands) puts `inspection` on the path, the same as python -m."""
    command = shutil.which("inspection", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))
    if command is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the package is not installed: the README's test command installs it with -e .")
        pytest.skip("the package is not installed here (pip install -e .)")
    completed = subprocess.run([command, "methods", "--json"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert {"patchcore", "padim"} <= set(json.loads(completed.stdout)["methods"])
