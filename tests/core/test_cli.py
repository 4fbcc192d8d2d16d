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

from conftest import REPO, run_cli
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


# ----------------------------------------------------------------------------------------------------------
# fit --help: the chosen method's own parameters and defaults; the other commands do not import the methods


def _help_entry(text: str, option: str) -> str:
    """`option`'s entry in a --help text (its line and the help lines under it), whitespace collapsed."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines)
                 if line.startswith("  -") and line.split()[0] == option)
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("    "):  # the next option, a blank line or a section title
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_fit_help_of_a_method_shows_its_own_parameters_and_defaults():
    completed = run_cli("fit", "--method", "patchcore", "--help")
    assert completed.returncode == 0, completed.stderr
    text = completed.stdout
    assert "(default: 4.0)" in _help_entry(text, "--sigma")
    assert "(default: 'aspect')" in _help_entry(text, "--resize-mode")
    assert "(default: 256)" in _help_entry(text, "--resize")
    assert "(default: 224)" in _help_entry(text, "--crop")
    assert "(default: 0.01)" in _help_entry(text, "--coreset-ratio")
    # Other methods' options are not listed (AnoGAN's, VAE's, PaDiM's).
    assert "--epochs" not in text and "--n-features" not in text and "--latent-dim" not in text


def test_fit_help_of_another_method_shows_its_defaults_not_the_first_methods():
    from inspection.registry import get_method

    vae, anogan = get_method("vae").param_set(), get_method("anogan").param_set()
    crop, resize = vae.get("crop").default, vae.get("resize").default
    assert (crop, resize) != (anogan.get("crop").default, anogan.get("resize").default)
    completed = run_cli("fit", "--method", "vae", "--help")
    assert completed.returncode == 0, completed.stderr
    assert f"(default: {crop!r})" in _help_entry(completed.stdout, "--crop")
    assert f"(default: {resize!r})" in _help_entry(completed.stdout, "--resize")
    assert f"(default: {vae.get('epochs').default!r})" in _help_entry(completed.stdout, "--epochs")
    assert "--coreset-ratio" not in completed.stdout


def test_fit_help_without_a_method_lists_every_option_and_says_where_defaults_differ():
    completed = run_cli("fit", "--help")
    assert completed.returncode == 0, completed.stderr
    text = completed.stdout
    assert "(default: per method)" in _help_entry(text, "--sigma")  # AnoGAN 2.0, the others 4.0
    assert "(default: per method)" in _help_entry(text, "--crop")
    assert "(default: 0)" in _help_entry(text, "--seed")  # every method agrees
    assert "--epochs" in text and "--n-features" in text and "--coreset-ratio" in text
    assert "fit --method M --help" in " ".join(text.split())


def test_an_option_of_another_method_fails_in_one_line(demo_root, tmp_path):
    completed = run_cli("fit", "--method", "padim", "--data", str(demo_root), "--out", str(tmp_path / "m"),
                        "--epochs", "3")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), completed.stderr
    assert "parameter(s) ['epochs'] do not apply to method 'padim'" in lines[0]
    assert not (tmp_path / "m.safetensors").exists()


_IMPORTED_METHODS = ("import sys; from inspection.cli import build_parser; build_parser().parse_args(sys.argv[1:]); "
                     "print(sorted(name for name in sys.modules if name.startswith('inspection.methods.')))")


@pytest.mark.parametrize("arguments", [
    ["demo"],
    ["predict", "--model", "m", "image.png", "--out", "o"],
    ["evaluate", "--model", "m", "--data", "d"],
    ["recalibrate", "--model", "m", "--undo"],
    ["methods"],
])
def test_parsing_a_command_that_needs_no_method_imports_none(arguments):
    completed = subprocess.run([sys.executable, "-c", _IMPORTED_METHODS, *arguments], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_parsing_fit_imports_the_methods():
    """The probe above can see a method import: fit needs them to build its options."""
    completed = subprocess.run([sys.executable, "-c", _IMPORTED_METHODS, "fit", "--method", "patchcore", "--data",
                                "d", "--out", "o"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "inspection.methods.patchcore" in completed.stdout
