"""Shared fixtures: the shared data folder (skip locally when absent, fail in CI), the demo dataset, small models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: Model files of earlier versions and what they scored, kept to prove they still load.
FIXTURES = REPO / "tests" / "fixtures"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m inspection --quiet ARGS…` in a process of its own, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "inspection", "--quiet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def shared_dir() -> Path | None:
    """The shared folder (data, weights), or None when absent; absent under CI=true is a failure, not a skip."""
    shared = Path(os.environ.get("INSPECTION_SHARED", REPO.parent / "shared"))
    if (shared / "data").is_dir():
        return shared
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"shared data not found at {shared} (set INSPECTION_SHARED); CI must not skip these tests")
    return None


def require_shared() -> Path:
    shared = shared_dir()
    if shared is None:
        pytest.skip("shared data not available (set INSPECTION_SHARED)")
    return shared


@pytest.fixture
def shared_data() -> Path:
    return require_shared() / "data"


@pytest.fixture
def shared_weights() -> Path:
    return require_shared() / "weights"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo dataset (category folder), generated once per test session."""
    from inspection.data.demo import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo-data"))


@pytest.fixture(scope="session")
def demo_dataset(demo_root: Path):
    from inspection.data.datasets import open_dataset

    return open_dataset(demo_root)


def random_images(count: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_root: Path) -> Path:
    """An empty models folder and the demo data folder, as the app finds them through the environment (a module
    whose pages need another data folder defines its own)."""
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("INSPECTION_MODELS_DIR", str(folder))
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(demo_root.parent))
    return folder


@pytest.fixture(autouse=True)
def _main_module_restored():
    """Streamlit's AppTest runs a page as `__main__`; a training process started later (multiprocessing's spawn
    re-runs the parent's main file) would then run that page. Each test leaves `__main__` as it found it."""
    import sys

    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    yield
    sys.modules["__main__"] = main
    if main is not None and getattr(main, "__file__", None) != main_file:
        main.__file__ = main_file


@pytest.fixture(scope="session", params=["patchcore", "padim"])
def fitted(request, demo_dataset):
    """PatchCore and PaDiM at their defaults, fitted and evaluated on the demo data once per session: (model,
    evaluation, the progress reports of the fit)."""
    from inspection.registry import create_model
    from inspection.workflows.train import fit_on_dataset

    model = create_model(request.param)
    reports = []
    evaluation = fit_on_dataset(model, demo_dataset, progress=reports.append)
    return model, evaluation, reports


@pytest.fixture(scope="session")
def bottle_model_files(tmp_path_factory: pytest.TempPathFactory):
    """A function: method name → the model file of that method at its defaults, fitted on MVTec AD bottle's good
    training images (real data, real weights) once per session, on first use."""
    from inspection.data.datasets import open_dataset
    from inspection.registry import create_model

    folder = tmp_path_factory.mktemp("bottle-models")
    made: dict[str, Path] = {}

    def model_file(method: str) -> Path:
        if method not in made:
            dataset = open_dataset(require_shared() / "data" / "mvtec_ad", "bottle")
            model = create_model(method).fit([sample.path for sample in dataset.train])
            made[method] = model.save(folder / f"bottle-{method}.safetensors")
        return made[method]

    return model_file
