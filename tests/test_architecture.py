"""The layout holds: the package is sorted into wings with one rule each, checked here by package prefix — ground ←
data/features/ops/scores ← model ← methods ← registry, results/explain ← workflows ← bench/cli ← app —; no import
cycles; no UI library below the app; pages import only the app package and the core; and a method is found by
dropping one file into the methods folder."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import inspection.methods
from conftest import REPO
from inspection import registry
from inspection.model.base import AnomalyModel
from inspection.ops.smoothing import gaussian_blur
from inspection.params import setting

CORE = REPO / "inspection"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """Every module of `known` that an import statement of `path` names — anywhere in the file, including
    inside functions and under `if TYPE_CHECKING:` — with its line number."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from package import name` imports the submodule `name` when there is one, else the package.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found += [(target, node.lineno) for target in targets if target in known]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {module: {target for target, _ in _imported(module, path, known)} for module, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_import_graph_finds_what_it_should():
    graph = import_graph()
    # Relative, absolute and in-function imports all count.
    assert "inspection.model.base" in graph["inspection.methods.patchcore"] or \
        "inspection.model.backbone_model" in graph["inspection.methods.patchcore"]
    assert "inspection.workflows.train" in graph["inspection.cli"]  # imported inside a function
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_core():
    assert find_cycles(import_graph()) == []


# ----------------------------------------------------------------------------------------------------------
# Wings and their rules

#: The ground every wing stands on: user errors, parameter declarations, progress reports, device and threads,
#: output paths. It imports nothing of the package but `errors`.
GROUND = {"inspection", "errors", "params", "progress", "device", "outputs"}
#: What each wing may import (besides itself), by the wing's name: a folder of the package, or a top-level module.
LOWER = GROUND | {"data", "features", "ops", "scores"}
ALLOWED: dict[str, set[str]] = {
    **{name: {"errors"} for name in GROUND},
    **{name: set(GROUND) for name in ("data", "features", "ops", "scores")},
    "model": LOWER,
    "methods": LOWER | {"model"},
    "registry": LOWER | {"model", "methods"},
    "results": LOWER | {"model"},
    "explain": LOWER | {"model", "results"},
    "workflows": LOWER | {"model", "registry", "results", "explain", "teach"},
    "bench": LOWER | {"model", "registry", "results", "explain", "workflows", "runtime", "export"},
    # The deployment wings: the torch-free runtime reads exported folders (and writes predict's CSV through the
    # torch-free `workflows.batch`); the export writes them; the service serves either kind.
    "runtime": LOWER | {"model", "results", "workflows"},
    "export": LOWER | {"model", "registry", "runtime"},
    "service": LOWER | {"model", "results", "workflows", "runtime", "export"},
    # Live pipelines open either kind of model through `export` and send the service's records.
    "live": LOWER | {"model", "results", "runtime", "export"},
    # Teaching rewrites model files: it loads them through the registry and learns through the methods' hooks.
    "teach": LOWER | {"model", "registry"},
    "cli": LOWER | {"model", "registry", "results", "explain", "workflows", "bench", "runtime", "export", "service",
            "live", "teach"},
    "__main__": {"cli"},
}
#: The ground and the entry points are the only modules at the top level; everything else lives in a wing.
TOP_LEVEL = GROUND - {"inspection"} | {"registry", "cli", "__main__", "__init__"}


def wing(module: str) -> str:
    """The wing a module of the package belongs to: its folder, or its own name at the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_belongs_to_a_known_wing():
    assert {wing(module) for module in _modules()} == set(ALLOWED)


def test_each_wing_imports_only_the_wings_below_it():
    known = set(_modules())
    crossings = []
    for module, path in _modules().items():
        for target, line in _imported(module, path, known):
            if wing(target) != wing(module) and wing(target) not in ALLOWED[wing(module)]:
                crossings.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert crossings == []


def test_the_rule_check_catches_an_upward_import():
    assert "workflows" not in ALLOWED["results"] and "methods" not in ALLOWED["workflows"]
    assert wing("inspection.workflows.train") == "workflows" and wing("inspection.cli") == "cli"


def test_the_top_level_holds_only_the_ground_and_the_entry_points():
    modules = sorted(path.stem for path in CORE.glob("*.py"))
    assert set(modules) <= TOP_LEVEL and len(modules) <= 10, modules


def test_every_folder_says_its_job_and_its_rule_in_its_docstring():
    for folder in sorted(path for path in CORE.iterdir() if path.is_dir() and path.name != "__pycache__"):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert len(docstring) > 40 and "Imports" in docstring, folder.name


def test_no_method_constructor_takes_arbitrary_keywords():
    """Methods name their parameters (generated from their declarations): no `**values` constructor hides them."""
    hidden = []
    for path in sorted((CORE / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__" and node.args.kwarg is not None:
                hidden.append(f"{path.name}:{node.lineno}")
    assert hidden == []


def test_the_app_imports_no_entry_point():
    for path in [REPO / "app.py", *(REPO / "app_pages").glob("*.py"), *(REPO / "inspection_app").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert not (node.module or "").startswith(("inspection.cli", "inspection.__main__")), path.name


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def test_the_core_imports_no_ui_library():
    offenders = {str(path.relative_to(REPO)): sorted(_top_level_imports(path) & {"streamlit", "plotly"})
                 for path in CORE.rglob("*.py")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_app_py_at_the_top_and_pages_import_only_the_app_package_and_the_core():
    assert [path.name for path in REPO.glob("*.py")] == ["app.py"]
    allowed = {"__future__", "typing", "streamlit", "inspection", "inspection_app"}
    for page in [REPO / "app.py", *sorted((REPO / "app_pages").glob("*.py"))]:
        assert _top_level_imports(page) <= allowed, page.name
    for path in (REPO / "inspection_app").rglob("*.py"):
        assert "pages" not in _top_level_imports(path)


# ----------------------------------------------------------------------------------------------------------
# A method is one new file


def _toy_source() -> str:
    """The PaDiM module with its registry name changed to "toy": nothing else differs."""
    source = (CORE / "methods" / "padim.py").read_text()
    assert source.count('name = "padim"') == 1
    return source.replace('name = "padim"', 'name = "toy"')


@pytest.fixture
def package_with_toy(tmp_path: Path) -> Path:
    """A copy of the `inspection` package with one more file, methods/toy.py."""
    root = tmp_path / "copy"
    shutil.copytree(CORE, root / "inspection", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "inspection" / "methods" / "toy.py").write_text(_toy_source())
    return root


def _run_copy(root: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "inspection", "--quiet", *args], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_a_new_method_file_appears_in_the_cli_listing_and_the_bench(package_with_toy: Path, demo_root: Path,
                                                                    tmp_path: Path):
    listed = _run_copy(package_with_toy, "methods", "--json")
    assert listed.returncode == 0, listed.stderr
    methods = json.loads(listed.stdout)["methods"]
    assert {"patchcore", "padim", "toy"} <= set(methods)
    assert [param["name"] for param in methods["toy"]["params"]] == [param["name"] for param in
                                                                     methods["padim"]["params"]]
    out = tmp_path / "bench"
    benched = _run_copy(package_with_toy, "bench", "--methods", "toy", "--data", str(demo_root.parent),
                        "--categories", "surface", "--out", str(out), "--set", "crop=64", "resize=64",
                        "n_features=20")
    assert benched.returncode == 0, benched.stderr
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [row["method"] for row in rows] == ["toy"] and 0 <= rows[0]["image_auroc"] <= 1
    assert "| toy | surface |" in (out / "results.md").read_text()


def test_a_new_method_file_appears_in_the_train_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     demo_root: Path):
    extra = tmp_path / "more_methods"
    extra.mkdir()
    (extra / "toy.py").write_text(_toy_source())
    # The discovery hook: every folder on the methods package's path is searched.
    monkeypatch.setattr(inspection.methods, "__path__", [*inspection.methods.__path__, str(extra)])
    monkeypatch.setenv("INSPECTION_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(demo_root.parent))
    registry.refresh()
    try:
        assert "toy" in registry.methods()
        at = AppTest.from_file(str(REPO / "app_pages" / "2_Train.py"), default_timeout=60).run()
        at.selectbox(key="train_method").set_value("toy").run()
        assert not at.exception
        keys = {widget.key for widget in at.main if widget.key}
        for name in registry.get_method("toy").param_set().names():
            assert f"param-toy-{name}" in keys, name
    finally:
        sys.modules.pop("inspection.methods.toy", None)
        monkeypatch.undo()
        registry.refresh()
    assert "toy" not in registry.methods()


class MeanImage(AnomalyModel):
    """A method with no backbone: the mean good image; score = absolute difference from it."""

    name = "mean_image"
    sigma: float = setting(2.0, "Blur of the map.", minimum=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mean: torch.Tensor | None = None

    def _fit_batches(self, batches, n_images, progress):
        total = sum(images.sum(0) for images in batches())
        self.mean = total / n_images

    def _score(self, images):
        maps = gaussian_blur((images - self.mean).abs().mean(1), self.sigma)
        return maps, maps.flatten(1).amax(1)

    def _state(self):
        return {"mean": self.mean}

    def _load_state(self, state):
        self.mean = state["mean"]


def test_methods_without_a_backbone_are_first_class(demo_dataset, tmp_path: Path):
    from inspection_app.forms import form_fields, resolve_form

    assert "backbone" not in MeanImage.param_set().names()
    fields = {spec.name for specs in form_fields(MeanImage).values() for spec in specs}
    assert "sigma" in fields and "backbone" not in fields
    assert resolve_form(MeanImage, {"sigma": "1.5", "crop": 64, "resize": 64})["sigma"] == 1.5
    model = MeanImage(crop=64, resize=64).fit([sample.path for sample in demo_dataset.train[:20]])
    assert model.fitted and repr(model) == "MeanImage(resize=64, crop=64)"
    path = model.save(tmp_path / "mean.safetensors")
    loaded = MeanImage.load(path)
    images = [sample.path for sample in demo_dataset.test[:3]]
    assert (loaded.predict(images).raw_scores == model.predict(images).raw_scores).all()
    assert loaded.header().backbone is None
