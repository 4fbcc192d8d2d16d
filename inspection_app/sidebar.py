"""The sidebar every page shares: where the images come from (demo, local folder, MVTec download) and which
trained model to use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from inspection.data.datasets import Dataset
from inspection.data.demo import default_demo_root
from inspection.data.download import MVTEC_CATEGORIES, category_url, download_mvtec_category, downloaded_categories
from inspection.errors import friendly_error

from .caches import cached_dataset, cached_demo_root
from .library import ModelEntry, list_models, models_dir
from .model_choice import choice_note, dataset_key, followed_choice
from .page import kept_radio, kept_selectbox, kept_text_input
from .sources import DataSource, folder_categories, known_datasets, load_last_folder, save_last_folder

SOURCE_KINDS = {"demo": "Demo dataset", "folder": "Local folder", "download": "Download MVTec AD"}


def data_dir() -> Path:
    """The data folder: the demo lives here and downloads go here (env INSPECTION_DATA_DIR)."""
    return default_demo_root()


def data_source_picker() -> Dataset | None:
    """Sidebar: demo, a local folder (typed or chosen) or a downloaded MVTec AD category → the Dataset."""
    sidebar = st.sidebar
    sidebar.header("Data")
    _reopen_last_folder()
    kind = kept_radio(sidebar, "Source", list(SOURCE_KINDS), "source_kind", format_func=SOURCE_KINDS.get,
                      horizontal=False, help="Where the images come from.")
    try:
        source = _source_of_kind(sidebar, kind)
        if source is None:
            return None
        dataset = cached_dataset(source.kind, source.root, source.category)
    except Exception as error:  # noqa: BLE001
        sidebar.error(friendly_error(error))
        return None
    counts = dataset.counts()
    sidebar.caption(f"**{dataset.category}** ({dataset.layout} layout): {counts['train']['good']} training images, "
                    f"{sum(counts['test'].values())} test images")
    st.session_state["dataset_root"] = str(dataset.root)
    _remember_folder(source)
    return dataset


def _reopen_last_folder() -> None:
    """In a new session (a new browser tab), open again the local folder that was opened last."""
    if st.session_state.get("_last_folder_offered"):
        return
    st.session_state["_last_folder_offered"] = True
    if "source_kind" in st.session_state or "_kept_source_kind" in st.session_state:
        return  # the session has its source already (set by a link, or by a test)
    last = load_last_folder()
    if last is None:
        return
    values = {"source_kind": "folder", "source_path": last.root, "source_found": ""}
    if last.category:
        values["source_category"] = last.category
    for key, value in values.items():
        st.session_state[key] = value
        st.session_state[f"_kept_{key}"] = value
    st.session_state["_last_folder_saved"] = (last.root, last.category)


def _remember_folder(source: DataSource) -> None:
    """Remember a local folder that opened, for the next session (written only when it changes)."""
    if source.kind != "folder" or st.session_state.get("_last_folder_saved") == (source.root, source.category):
        return
    if save_last_folder(source):
        st.session_state["_last_folder_saved"] = (source.root, source.category)


def _source_of_kind(sidebar: Any, kind: str) -> DataSource | None:
    """The widgets of one kind of source; None while the user has not chosen enough."""
    if kind == "demo":
        return DataSource("demo", cached_demo_root())
    if kind == "folder":
        found = known_datasets(data_dir())
        choices = [""] + [root if category is None else f"{root}::{category}" for root, category in found]
        chosen = kept_selectbox(sidebar, "Choose a dataset found in the data folder", choices, "source_found",
                                format_func=lambda value: value.replace("::", " · ") if value else "—",
                                help=f"Datasets under {data_dir()}")
        typed = kept_text_input(sidebar, "…or type a folder path", "source_path",
                                placeholder="/data/mvtec_ad/bottle",
                                help="MVTec layout (CATEGORY/train/good, test/TYPE, ground_truth/TYPE) or a plain "
                                     "folder with good/, defect/ and optional masks/.")
        if typed.strip():
            root, category = typed.strip(), None
        elif chosen:
            root, _, category = chosen.partition("::")
            category = category or None
        else:
            sidebar.info("Choose or type a dataset folder.")
            return None
        categories = folder_categories(root) if category is None else None
        if categories:
            category = kept_selectbox(sidebar, "Category", categories, "source_category")
        return DataSource("folder", root, category)
    return _download_source(sidebar)


def _download_source(sidebar: Any) -> DataSource | None:
    """Category, URL setting and a Download button with progress; the category once it is present."""
    category = kept_selectbox(sidebar, "MVTec AD category", MVTEC_CATEGORIES, "download_category")
    url = kept_text_input(sidebar, "Archive URL (setting)", "download_url", placeholder=category_url(category),
                          help="Empty: env INSPECTION_MVTEC_URL, else the official MVTec AD archive. '{category}' "
                               "in a custom URL is replaced by the category.")
    present = downloaded_categories(data_dir())
    if category in present:
        return DataSource("download", str(data_dir() / "mvtec_ad"), category)
    sidebar.caption(f"Not downloaded yet. It goes to {data_dir() / 'mvtec_ad' / category} "
                    "(MVTec AD, CC BY-NC-SA 4.0).")
    if sidebar.button("Download", key="download_button", icon=":material/download:"):
        bar = sidebar.progress(0.0, text="Connecting…")

        def report(done: int, total: int, stage: str) -> None:
            if stage == "download":
                text = f"Downloading: {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else "")
                bar.progress(min(1.0, done / total) if total else 0.0, text=text)
            else:
                bar.progress(min(1.0, done / total) if total else 0.0, text=f"Unpacking: {done}/{total} files")

        try:
            download_mvtec_category(category, data_dir(), url=url.strip() or None, progress=report)
        except Exception as error:  # noqa: BLE001
            bar.empty()
            sidebar.error(friendly_error(error))
            return None
        bar.empty()
        sidebar.success(f"Downloaded {category}.")
        return DataSource("download", str(data_dir() / "mvtec_ad"), category)
    return None


def model_entries() -> list[ModelEntry]:
    """The models folder's usable models; unusable files are named in the sidebar (never raised, never picked)."""
    entries, problems = list_models(models_dir())
    for problem in problems:
        st.sidebar.warning(f"Model file {problem} (see the Train page)", icon=":material/block:")
    return entries


def model_picker(entries: Sequence[ModelEntry], container: Any = None, key: str = "model",
                 dataset: Dataset | None = None) -> ModelEntry | None:
    """Sidebar select box of trained models that follows the open dataset (its newest model whenever it
    changes; the user's own pick while it stays), with a note when the choice was not made on it."""
    container = container or st.sidebar
    if not entries:
        return None
    by_path = {str(entry.path): entry for entry in entries}
    made_for = f"_model_for_{key}"  # the dataset the current choice was made with
    pending = st.session_state.pop(f"_pending_{key}", None)
    if pending in by_path:  # chosen elsewhere in the previous run (e.g. a model just trained)
        st.session_state[key] = pending
        st.session_state.pop(made_for, None)
    current = st.session_state.get(key, st.session_state.get(f"_kept_{key}"))
    choice = followed_choice(entries, dataset, current, st.session_state.get(made_for))
    # Set before the widget is drawn: a widget's state can only be changed before it is drawn in a run.
    st.session_state[key] = st.session_state[f"_kept_{key}"] = choice
    if dataset is not None:
        st.session_state[made_for] = dataset_key(dataset)
    chosen = kept_selectbox(container, "Model", list(by_path), key, default=choice,
                            format_func=lambda path: by_path[path].label,
                            help=f"Trained models in {models_dir()}. Opening another dataset selects its newest "
                                 "model; a model you pick stays while the dataset does.")
    entry = by_path.get(chosen)
    note = choice_note(entries, dataset, entry)
    if note is not None:
        kind, text = note
        if kind == "none":
            container.info(text, icon=":material/info:")
        else:
            container.caption(text)
    return entry


def open_model_dataset(entry: ModelEntry) -> None:
    """Make the sidebar open the dataset a model was made on (call it before the sidebar is drawn: from a
    callback, or before `data_source_picker`)."""
    if not entry.data_path:
        return
    for key, value in (("source_kind", "folder"), ("source_path", entry.data_path), ("source_found", "")):
        st.session_state[key] = value
        st.session_state[f"_kept_{key}"] = value


def model_image_path(entry: ModelEntry, relative: str) -> Path:
    """A test image a model's file records (by its path relative to the dataset it was evaluated on)."""
    if not entry.data_path:
        raise FileNotFoundError(f"{entry.name} does not record the dataset it was evaluated on")
    return Path(entry.data_path) / relative


def inspect_model_image(entry: ModelEntry, relative: str, defect_type: str) -> None:
    """Prepare the Inspect page to show one test image of the model's dataset, with this model (a button's
    on_click callback: it runs before the widgets it sets are drawn)."""
    open_model_dataset(entry)
    name = Path(relative).name
    for key, value in (("inspect_origin", "dataset"), ("inspect_split", "test"), ("inspect_type", defect_type),
                       ("inspect_file", f"{defect_type}/{name}"), ("model", str(entry.path))):
        st.session_state[key] = value
        st.session_state[f"_kept_{key}"] = value
    st.session_state.pop("_model_for_model", None)  # this model on purpose, whatever dataset opens with it


def require_model(dataset: Dataset | None = None) -> ModelEntry:
    """The sidebar's model picker; stops the page with a hint when no model is trained yet."""
    st.sidebar.header("Model")
    entry = model_picker(model_entries(), dataset=dataset)
    if entry is None:
        st.info("No trained model yet: train one on the **Train** page (or on the home page, in one click).")
        st.stop()
    return entry


def select_model(path: str | Path, key: str = "model") -> None:
    """Make `path` the chosen model on the next run (e.g. right after training it)."""
    # The picker may already be drawn in this run, when its state can no longer be set: it applies this next run.
    st.session_state[f"_pending_{key}"] = str(path)
    st.session_state[f"_kept_{key}"] = str(path)
    st.session_state.pop(f"_model_for_{key}", None)  # chosen on purpose: kept whatever dataset is open
