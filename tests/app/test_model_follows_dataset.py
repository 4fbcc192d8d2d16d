"""The model picker follows the open dataset (issue 22): opening another dataset selects its newest model, a model
the user picks stays while the dataset does, a dataset without a model says so, and a new session opens the last
local folder again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_testing import PAGE_TIMEOUT, REPO, assert_clean, copy_model, demo_image, run_page, train_small_model
from inspection.data.datasets import Dataset
from inspection.model.modelfile import update_info
from inspection_app.compare_view import default_compare_models
from inspection_app.library import ModelEntry, list_models
from inspection_app.model_choice import choice_note, dataset_key, dataset_models, default_model_for, followed_choice
from inspection_app.sources import DataSource, last_folder_file, load_last_folder, save_last_folder

# ------------------------------------------------------------------------------------------ plain functions


def entry(name: str, category: str, data_path: Path | str = "", created: str = "2025-01-01") -> ModelEntry:
    return ModelEntry(path=Path(f"/models/{name}.safetensors"), name=name, method="patchcore", backbone="",
                      category=category, created=created, data_path=str(data_path))


def dataset(root: Path, category: str | None = None) -> Dataset:
    return Dataset(root=root, category=category or root.name, layout="mvtec")


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """Dataset folders: the demo, KolektorSDD's commutator, and a copy of the commutator mounted elsewhere."""
    found = {"demo": tmp_path / "demo" / "surface", "ksdd": tmp_path / "ksdd" / "commutator",
             "copy": tmp_path / "mnt" / "commutator"}
    for folder in found.values():
        folder.mkdir(parents=True)
    return found


@pytest.fixture
def entries(folders: dict[str, Path]) -> list[ModelEntry]:
    """Newest first, as the library lists them: the demo model is the newest of all."""
    return [entry("surface default", "surface", folders["demo"], "2025-03-01"),
            entry("commutator elsewhere", "commutator", folders["copy"], "2025-02-15"),
            entry("commutator new", "commutator", folders["ksdd"], "2025-02-01"),
            entry("commutator old", "commutator", folders["ksdd"], "2025-01-01")]


def names(models: list[ModelEntry]) -> list[str]:
    return [model.name for model in models]


def test_the_open_datasets_models_are_its_folders_then_its_categorys(entries, folders) -> None:
    ksdd = dataset(folders["ksdd"])
    assert names(dataset_models(entries, ksdd)) == ["commutator new", "commutator old", "commutator elsewhere"]
    assert default_model_for(entries, ksdd).name == "commutator new"
    assert default_model_for(entries, dataset(folders["demo"])).name == "surface default"
    # No model of its own: the newest of all; no dataset open: the same.
    assert dataset_models(entries, dataset(folders["demo"].parent / "tiles")) == []
    assert default_model_for(entries, dataset(folders["demo"].parent / "tiles")).name == "surface default"
    assert default_model_for(entries, None).name == "surface default"
    assert default_model_for([], ksdd) is None
    assert default_compare_models(entries, ksdd, count=2) == [str(entries[2].path), str(entries[3].path)]


def test_the_choice_follows_a_new_dataset_and_keeps_a_pick_while_it_stays(entries, folders) -> None:
    demo, ksdd = dataset(folders["demo"]), dataset(folders["ksdd"])
    surface, elsewhere, new, old = (str(model.path) for model in entries)
    assert followed_choice(entries, demo, None, None) == surface  # a new session
    assert followed_choice(entries, ksdd, surface, dataset_key(demo)) == new  # the dataset changed
    assert followed_choice(entries, ksdd, old, dataset_key(ksdd)) == old  # picked on purpose, same dataset
    assert followed_choice(entries, ksdd, surface, dataset_key(ksdd)) == surface  # even a model of other data
    assert followed_choice(entries, demo, old, dataset_key(ksdd)) == surface  # the dataset changed again
    assert followed_choice(entries, dataset(folders["copy"]), new, dataset_key(ksdd)) == elsewhere
    # Set on purpose without a dataset in mind (a model just trained, a link): kept, whatever is open.
    assert followed_choice(entries, demo, old, None) == old
    # No dataset open yet (a folder not typed): nothing changes.
    assert followed_choice(entries, None, old, dataset_key(demo)) == old
    # The chosen file is gone: the open dataset's newest.
    assert followed_choice(entries, ksdd, "/models/deleted.safetensors", dataset_key(ksdd)) == new
    assert followed_choice([], ksdd, old, None) is None


def test_the_note_says_when_the_open_dataset_has_no_model_and_only_then_advises_training(entries, folders) -> None:
    surface, _, new, _ = entries
    ksdd, tiles = dataset(folders["ksdd"]), dataset(folders["demo"].parent / "tiles")
    assert choice_note(entries, ksdd, new) is None
    kind, text = choice_note(entries, tiles, surface)
    assert kind == "none" and text.startswith("No model of 'tiles' yet: surface default was made on 'surface'")
    assert "Train" in text
    kind, text = choice_note(entries, ksdd, surface)  # a model of other data picked while ksdd has its own
    assert kind == "other" and "Train" not in text
    assert text == "surface default was made on 'surface'; the newest model of 'commutator' is commutator new."
    assert choice_note(entries, None, surface) is None
    assert choice_note(entries, ksdd, None) is None


def test_the_last_folder_is_remembered_in_the_models_folder(tmp_path: Path, folders) -> None:
    models = tmp_path / "models"  # not there yet: made on the first save
    assert load_last_folder(models) is None
    assert save_last_folder(DataSource("folder", str(folders["ksdd"])), models)
    assert last_folder_file(models) == models / "last-folder.json"
    assert load_last_folder(models) == DataSource("folder", str(folders["ksdd"]))
    assert save_last_folder(DataSource("folder", str(folders["ksdd"].parent), "commutator"), models)
    assert load_last_folder(models) == DataSource("folder", str(folders["ksdd"].parent), "commutator")
    assert [path.name for path in models.iterdir()] == ["last-folder.json"]  # nothing left aside
    # Only local folders are remembered; one gone since is not offered.
    assert not save_last_folder(DataSource("demo", str(folders["demo"])), models)
    shutil.rmtree(folders["ksdd"])
    assert load_last_folder(models) is None
    # A damaged file or an unwritable place is never an error.
    last_folder_file(models).write_text("{not json")
    assert load_last_folder(models) is None
    last_folder_file(models).write_text('["a list"]')
    assert load_last_folder(models) is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert not save_last_folder(DataSource("folder", str(folders["demo"])), blocked)


# ------------------------------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "small.safetensors")


@pytest.fixture
def commutator(demo_root: Path, tmp_path: Path) -> Path:
    """A local dataset of another category (the demo's images under KolektorSDD's category name)."""
    return Path(shutil.copytree(demo_root, tmp_path / "ksdd" / "commutator"))


@pytest.fixture
def library(models: Path, small_model: Path, demo_root: Path, commutator: Path) -> dict[str, str]:
    """A models folder with the demo's model (the newest of all) and two older models of the commutator."""
    made = {}
    for name, category, data, created in [("surface patchcore (default)", "surface", demo_root, "2025-03-01"),
                                          ("commutator new", "commutator", commutator, "2025-02-01"),
                                          ("commutator old", "commutator", commutator, "2025-01-01")]:
        path = copy_model(small_model, models, f"{name.split()[0]}-{created}.safetensors")
        # The same small fitted model, its header saying where and when it was made (as tests of damaged files
        # rewrite headers): the picker reads nothing else.
        update_info(path, display_name=name, category=category, data_path=str(data),
                    created=f"{created}T12:00:00+00:00")
        made[name] = str(path)
    assert [entry.name for entry in list_models(models)[0]] == list(made)  # newest first
    return made


def open_folder(at: AppTest, folder: Path) -> AppTest:
    """Sidebar: Source → Local folder, then type the folder's path."""
    at.sidebar.radio(key="source_kind").set_value("folder").run()
    return at.sidebar.text_input(key="source_path").input(str(folder)).run()


def model(at: AppTest) -> str:
    return at.sidebar.selectbox(key="model").value


def test_the_picker_follows_the_open_dataset_and_a_new_session_reopens_the_last_folder(
        models: Path, library: dict[str, str], commutator: Path, demo_root: Path) -> None:
    at = run_page("app.py")
    assert_clean(at)
    assert model(at) == library["surface patchcore (default)"]  # the demo is open
    at = open_folder(at, commutator)
    assert_clean(at)
    assert model(at) == library["commutator new"]  # the newest model of the dataset just opened
    assert not at.sidebar.info  # it has models: no note, no advice to train one
    # An uploaded crack is scored by that model, without a word about another category.
    at.file_uploader(key="home_upload").set_value([("crack.png", demo_image(demo_root, "hole").read_bytes(),
                                                    "image/png")]).run()
    assert_clean(at)
    assert any("model commutator new" in caption.value for caption in at.caption)
    assert not any("trained on" in warning.value for warning in at.warning)
    # A model picked on purpose stays while the dataset does.
    at.sidebar.selectbox(key="model").set_value(library["commutator old"]).run()
    at.run()
    assert model(at) == library["commutator old"]
    # Another dataset: its newest model again; and back.
    at.sidebar.radio(key="source_kind").set_value("demo").run()
    assert model(at) == library["surface patchcore (default)"]
    at.sidebar.radio(key="source_kind").set_value("folder").run()
    assert model(at) == library["commutator new"]

    # A new browser tab (a new session): the last folder is open again, with its newest model.
    assert (models / "last-folder.json").is_file()
    fresh = AppTest.from_file(str(REPO / "app.py"), default_timeout=PAGE_TIMEOUT).run()
    assert_clean(fresh)
    assert fresh.sidebar.radio(key="source_kind").value == "folder"
    assert fresh.sidebar.text_input(key="source_path").value == str(commutator)
    assert model(fresh) == library["commutator new"]


def test_a_dataset_without_a_model_says_so(models: Path, library: dict[str, str], demo_root: Path,
                                           tmp_path: Path) -> None:
    tiles = Path(shutil.copytree(demo_root, tmp_path / "line3" / "tiles"))
    at = open_folder(run_page("app.py"), tiles)
    assert_clean(at)
    assert model(at) == library["surface patchcore (default)"]  # none of its own: the newest of all
    notes = [info.value for info in at.sidebar.info]
    assert notes == ["No model of 'tiles' yet: surface patchcore (default) was made on 'surface'. Train one on "
                     "the **Train** page."]
