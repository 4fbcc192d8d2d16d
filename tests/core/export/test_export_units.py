"""Export and runtime mechanics on the demo data (fast): aspect mode's padding and several working sizes, the
familiarity squeeze as matrices, sizes no graph takes, the CLI's export and predict --runtime, bad folders."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli
from inspection.errors import ImageSizeError, ModelFileError, ParameterError
from inspection.export.exporting import export_model
from inspection.export.scorers import load_scorer
from inspection.model.familiarity import squeeze_picture, squeeze_weights
from inspection.registry import create_model
from inspection.runtime import load_export
from inspection.runtime.exported import MANIFEST


@pytest.mark.parametrize("length", [30, 100, 224, 256, 397, 656, 1280])
def test_the_squeeze_matrices_are_torchs_antialiased_resize(length):
    picture = torch.rand(2, 3, length, 37)
    rows = torch.from_numpy(squeeze_weights(length))
    columns = torch.from_numpy(squeeze_weights(37))
    assert torch.allclose(rows @ picture @ columns.T, squeeze_picture(picture), atol=1e-5)


@pytest.fixture(scope="module")
def aspect_patchcore(demo_dataset, tmp_path_factory):
    model = create_model("patchcore", resize=128).fit([sample.path for sample in demo_dataset.train])
    path = model.save(tmp_path_factory.mktemp("aspect") / "aspect.safetensors")
    return model, path


def _frames(demo_dataset, sizes):
    """Demo test images resized to each (height, width), cycling through the sizes."""
    return [cv2.resize(cv2.imread(str(sample.path))[:, :, ::-1], (sizes[index % len(sizes)][1],
                                                                   sizes[index % len(sizes)][0]))
            for index, sample in enumerate(demo_dataset.test[:12])]


def test_aspect_mode_pads_several_working_sizes_and_scores_as_torch(aspect_patchcore, demo_dataset, tmp_path):
    model, _ = aspect_patchcore
    # 100 × 157 and 100 × 155 pad to one working size (128 × 208, content 201 and 198); 100 × 100 is another.
    sizes = [(100, 157), (100, 155), (100, 100)]
    summary = export_model(model, tmp_path / "export", ("onnx",), sizes)
    assert sorted(entry.working for entry in summary.graphs) == [(128, 128), (128, 208)]
    frames = _frames(demo_dataset, sizes)
    expected, got = model.predict(frames), load_export(tmp_path / "export").predict(frames, batch_size=4)
    finite = np.isfinite(expected.raw_maps)
    assert not finite.all()  # padding is NaN in both
    assert np.array_equal(finite, np.isfinite(got.raw_maps))
    assert np.abs(expected.raw_maps[finite] - got.raw_maps[finite]).max() <= 1e-3 * np.ptp(expected.raw_maps[finite])
    assert np.array_equal(expected.verdicts, got.verdicts)
    assert np.allclose(expected.familiarity_distances, got.familiarity_distances, atol=1e-5)
    with pytest.raises(ImageSizeError, match="export again adding --image-size 300x100"):
        load_export(tmp_path / "export").preprocessing.check_inspectable(100, 300, "wide.png")


@pytest.mark.parametrize(("method", "settings"), [
    ("vae", {"scoring": "residual", "resize": 32, "crop": 32, "epochs": 2, "hidden_dim": 32, "latent_dim": 8,
             "width": 8}),
    ("anogan", {"scoring": "encoder", "resize": 32, "crop": 32, "epochs": 2}),
    ("patch_svdd", {"resize": 64, "crop": 64, "epochs": 1}),
])
def test_the_learned_methods_one_pass_variants_export(method, settings, demo_dataset, tmp_path):
    model = create_model(method, **settings).fit([sample.path for sample in demo_dataset.train[:16]])
    export_model(model, tmp_path / method, ("onnx", "openvino"))
    files = [sample.path for sample in demo_dataset.test[:12]]
    expected = model.predict(files)
    for engine in ("onnx", "openvino"):
        got = load_export(tmp_path / method, engine).predict(files)
        assert np.array_equal(got.verdicts, expected.verdicts)
        assert np.abs(got.raw_maps - expected.raw_maps).max() <= 1e-3 * np.ptp(expected.raw_maps)
        assert np.allclose(got.raw_scores, expected.raw_scores, rtol=1e-4, atol=1e-4)


def test_the_cli_exports_and_predict_runs_the_export(aspect_patchcore, demo_dataset, tmp_path):
    _, model_file = aspect_patchcore
    without_size = run_cli("export", "--model", str(model_file), "--out", str(tmp_path / "export"))
    assert without_size.returncode == 2 and "--image-size" in without_size.stderr
    assert "Traceback" not in without_size.stderr
    folder = demo_dataset.test[0].path.parent
    done = run_cli("export", "--model", str(model_file), "--out", str(tmp_path / "export"), "--example", str(folder),
                   "--format", "onnx", "openvino")
    assert done.returncode == 0, done.stderr
    assert "exported patchcore" in done.stdout and (tmp_path / "export" / "graph-128x128.xml").is_file()
    manifest = json.loads((tmp_path / "export" / MANIFEST).read_text())
    assert manifest["parity"]["max_map_difference"] < 1e-2 and manifest["header"]["method"] == "patchcore"
    for runtime in ("torch", "openvino"):
        source = model_file if runtime == "torch" else tmp_path / "export"
        run = run_cli("predict", "--model", str(source), "--runtime", runtime, str(folder), "--out",
                      str(tmp_path / runtime))
        assert run.returncode == 0, run.stderr
    rows = {}
    for runtime in ("torch", "openvino"):
        with open(tmp_path / runtime / "predictions.csv", newline="") as handle:
            rows[runtime] = {row["file"]: row for row in csv.DictReader(handle)}
    assert rows["torch"].keys() == rows["openvino"].keys()
    assert all(rows["torch"][name]["verdict"] == row["verdict"] for name, row in rows["openvino"].items())
    wrong = run_cli("predict", "--model", str(model_file), "--runtime", "onnx", str(folder), "--out",
                    str(tmp_path / "wrong"))
    assert wrong.returncode == 2 and "export it first" in wrong.stderr


def test_bad_export_folders_say_what_is_wrong(aspect_patchcore, tmp_path):
    model, _ = aspect_patchcore
    with pytest.raises(ParameterError, match="is a model file"):
        load_scorer(aspect_patchcore[1], "onnx")
    export_model(model, tmp_path / "export", ("onnx",), [(100, 100)])
    with pytest.raises(ModelFileError, match="export with --format openvino"):
        load_export(tmp_path / "export", "openvino")
    (tmp_path / "export" / MANIFEST).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable manifest"):
        load_export(tmp_path / "export")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ParameterError, match="not an earlier export"):
        export_model(model, tmp_path / "other", ("onnx",), [(100, 100)])
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_bench_measures_the_export_on_a_runtime_beside_the_torch_model(demo_root, tmp_path):
    """`bench --runtime onnx`: the row's accuracy and speed are the export's on onnxruntime, the torch model's kept
    beside them; the export scores as the model does (the same image AUROC to 4 decimals)."""
    out = tmp_path / "bench"
    completed = run_cli("bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories", "surface",
                        "--set", "resize=64", "crop=64", "--runtime", "onnx", "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    row = json.loads((out / "results.json").read_text())["results"][0]
    assert row["runtime"] == "onnx" and row["label"].endswith("on onnx") and row["device"] == "cpu (onnx)"
    assert round(row["image_auroc"], 4) == round(row["torch_image_auroc"], 4)
    assert abs(row["pixel_auroc"] - row["torch_pixel_auroc"]) < 1e-3
    assert row["predict_ms_per_image"] > 0 and row["predict_ms_per_image_batch16"] > 0
    refused = run_cli("bench", "--methods", "padim", "--data", str(demo_root.parent), "--categories", "surface",
                      "--runtime", "tensorrt", "--out", str(tmp_path / "x"))
    assert refused.returncode == 2
