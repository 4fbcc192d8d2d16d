"""Streamlit pieces every page shares: page frame, sidebar pickers (data source, model), caches, errors,
training progress. Layout only: the numbers come from `inspection.views` and the rest of the core.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import streamlit as st

from inspection.base import AnomalyModel, Prediction
from inspection.data import Dataset
from inspection.demo import default_demo_root, demo_dataset
from inspection.device import describe_device, resolve_device
from inspection.download import MVTEC_CATEGORIES, category_url, download_mvtec_category, downloaded_categories
from inspection.errors import friendly_error, is_user_error
from inspection.images import load_image
from inspection.jobs import MANAGER, TrainingRequest
from inspection.library import ModelEntry, list_models, models_dir, unique_model_path
from inspection.registry import get_method, load_model
from inspection.charts import colorbar_figure, loss_figure
from inspection.views import DataSource, folder_categories, known_datasets, open_source, thumbnail

APP_NAME = "Visual inspection"
SOURCE_KINDS = {"demo": "Demo dataset", "folder": "Local folder", "download": "Download MVTec AD"}
DEFAULT_METHOD = "patchcore"

# --------------------------------------------------------------------------------------------- page frame


def page_setup(title: str, caption: str) -> None:
    """Page config, title, a caption saying what the page is for, and the device in the sidebar."""
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon="🔍", layout="wide")
    st.title(title)
    st.caption(caption)
    device = resolve_device("auto")
    note = "" if device.type == "cuda" else " · no GPU found, computing on the CPU"
    st.sidebar.caption(f"Compute: **{describe_device(device)}**{note}")


def show_error(error: BaseException) -> None:
    """A friendly message in the page; the traceback only for program errors, folded away."""
    st.error(friendly_error(error), icon=":material/warning:")
    if not is_user_error(error):
        with st.expander("Details for a bug report"):
            st.code("".join(traceback.format_exception(error)))


@contextmanager
def user_errors() -> Iterator[None]:
    """Show any error of the block as a message in the page instead of a traceback (the page goes on)."""
    # st.rerun/st.stop raise BaseException subclasses: they pass through untouched.
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every error becomes a message, none a crash
        show_error(error)


def colorbar(key: str = "colorbar") -> None:
    """The shared colour scale of every heatmap."""
    st.plotly_chart(colorbar_figure(), config={"displayModeBar": False}, key=key)
    st.caption("Heatmap colours: one fixed scale per model — 0 is a calm good surface, 0.5 the model's pixel "
               "threshold, 1 and above far above it. Grey hatching: outside the inspected crop.")


# ------------------------------------------------------------------------------------------ kept widgets


def _kept(key: str, default: Any, allowed: Sequence[Any] | None = None) -> None:
    """Prepare a widget's state so it survives page switches (Streamlit drops state of unrendered widgets)."""
    store = f"_kept_{key}"
    value = st.session_state.get(key, st.session_state.get(store, default))
    if allowed is not None and value not in allowed:
        value = default
    st.session_state[key] = value


def _keep(key: str) -> None:
    """Remember a widget's value outside the widget's own state (which a page switch clears)."""
    st.session_state[f"_kept_{key}"] = st.session_state.get(key)


def kept_selectbox(container: Any, label: str, options: Sequence[Any], key: str, default: Any = None,
                   **kwargs: Any) -> Any:
    """st.selectbox whose choice survives page switches (and falls back to `default` when no longer offered)."""
    options = list(options)
    _kept(key, default if default in options else (options[0] if options else None), options)
    value = container.selectbox(label, options, key=key, **kwargs)
    _keep(key)
    return value


def kept_radio(container: Any, label: str, options: Sequence[Any], key: str, default: Any = None,
               **kwargs: Any) -> Any:
    """st.radio whose choice survives page switches."""
    options = list(options)
    _kept(key, default if default in options else options[0], options)
    value = container.radio(label, options, key=key, **kwargs)
    _keep(key)
    return value


def kept_text_input(container: Any, label: str, key: str, default: str = "", **kwargs: Any) -> str:
    """st.text_input whose text survives page switches."""
    _kept(key, default)
    value = container.text_input(label, key=key, **kwargs)
    _keep(key)
    return value


# ------------------------------------------------------------------------------------------------ caches


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def cached_model(path: str, modified: float) -> AnomalyModel:
    """A loaded model; `modified` (the file's mtime) makes a rewritten file load afresh."""
    return load_model(path)


@st.cache_resource(show_spinner=False, max_entries=128)
def cached_prediction(path: str, modified: float, image_key: str, _image: np.ndarray) -> Prediction:
    """One forward pass per (model file version, image): sliders and reruns reuse it."""
    return cached_model(path, modified).predict([_image])


@st.cache_data(show_spinner=False, max_entries=4000)
def cached_thumbnail(path: str, modified: float, size: int = 160) -> np.ndarray:
    """A dataset thumbnail, decoded once per file version."""
    return thumbnail(path, size)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_image(path: str, modified: float) -> np.ndarray:
    """A decoded dataset image (the few recently shown ones stay in memory)."""
    return load_image(path)


@st.cache_resource(show_spinner="Listing the dataset…", ttl=30, max_entries=8)
def cached_dataset(kind: str, root: str, category: str | None) -> Dataset:
    """A dataset listing (directory entries only), refreshed every 30 s so that new files show up."""
    return open_source(DataSource(kind, root, category))


@st.cache_resource(show_spinner="Generating the demo dataset (first start only)…")
def cached_demo_root() -> str:
    """The demo dataset's folder, generated on the first start."""
    return str(demo_dataset())


def load_path_image(path: Path) -> np.ndarray:
    """A dataset image file as RGB, cached per file version."""
    return cached_image(str(path), path.stat().st_mtime)


def predict_image(entry: ModelEntry, image: np.ndarray, image_key: str) -> Prediction:
    """The model's prediction for one image, computed once per (model file version, image key)."""
    return cached_prediction(str(entry.path), entry.modified, image_key, image)


def model_of(entry: ModelEntry) -> AnomalyModel:
    """The loaded model of a models-folder entry (cached)."""
    return cached_model(str(entry.path), entry.modified)


# ------------------------------------------------------------------------------------------ data source


def data_dir() -> Path:
    """The data folder: the demo lives here and downloads go here (env INSPECTION_DATA_DIR)."""
    return default_demo_root()


def data_source_picker() -> Dataset | None:
    """Sidebar: demo, a local folder (typed or chosen) or a downloaded MVTec AD category → the Dataset."""
    sidebar = st.sidebar
    sidebar.header("Data")
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
    return dataset


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


# ------------------------------------------------------------------------------------------------ models


def model_entries() -> list[ModelEntry]:
    """The models folder's models; unreadable files are named in the sidebar, not raised."""
    entries, problems = list_models(models_dir())
    for problem in problems:
        st.sidebar.warning(f"Skipped a file in the models folder: {problem}")
    return entries


def model_picker(entries: Sequence[ModelEntry], container: Any = None, key: str = "model") -> ModelEntry | None:
    """Sidebar select box of trained models (newest first); None when there are none."""
    container = container or st.sidebar
    if not entries:
        return None
    by_path = {str(entry.path): entry for entry in entries}
    pending = st.session_state.pop(f"_pending_{key}", None)
    if pending in by_path:  # chosen elsewhere in the previous run (e.g. a model just trained)
        st.session_state[key] = pending
    chosen = kept_selectbox(container, "Model", list(by_path), key, default=str(entries[0].path),
                            format_func=lambda path: by_path[path].label,
                            help=f"Trained models in {models_dir()}")
    return by_path.get(chosen)


def require_model() -> ModelEntry:
    """The sidebar's model picker; stops the page with a hint when no model is trained yet."""
    st.sidebar.header("Model")
    entry = model_picker(model_entries())
    if entry is None:
        st.info("No trained model yet: train one on the **Train** page (or on the home page, in one click).")
        st.stop()
    return entry


def select_model(path: str | Path, key: str = "model") -> None:
    """Make `path` the chosen model on the next run (e.g. right after training it)."""
    # The picker may already be drawn in this run, when its state can no longer be set: it applies this next run.
    st.session_state[f"_pending_{key}"] = str(path)
    st.session_state[f"_kept_{key}"] = str(path)


# ----------------------------------------------------------------------------------------------- training


def default_training_request(name: str = "surface patchcore (default)") -> TrainingRequest:
    """PatchCore with EfficientNet-Lite0 on the built-in demo dataset, every setting at its default."""
    params = get_method(DEFAULT_METHOD).param_set().defaults()
    return TrainingRequest(DEFAULT_METHOD, params, cached_demo_root(), None,
                           str(unique_model_path(models_dir(), name)), name)


def start_training(request: TrainingRequest) -> str | None:
    """Start a training in the background worker; shows the refusal when one is already running."""
    try:
        job_id = MANAGER.start(request)
    except Exception as error:  # noqa: BLE001 - TrainingBusyError, an unwritable folder, …
        show_error(error)
        return None
    st.session_state["job_id"] = job_id
    return job_id


def _monitor_body() -> None:
    """Progress of the session's job, another session's running job, or how the session's last job ended."""
    job_id = st.session_state.get("job_id")
    state = MANAGER.state(job_id) if job_id else None
    active = MANAGER.active()
    if active is not None and (state is None or active.job_id != state.job_id):
        st.info(f"A training started in another browser session is running: "
                f"{active.request.display_name} — {active.describe()}")
        st.progress(active.fraction, text=active.describe())
    if state is None:
        return
    if state.active:
        st.progress(state.fraction, text=state.describe())
        if state.losses:
            st.plotly_chart(loss_figure(state.losses), key="loss-live")
        if st.button("Stop training", key="stop_training"):
            MANAGER.cancel(state.job_id)
        return
    if st.session_state.get("job_seen") != state.job_id:
        st.session_state["job_seen"] = state.job_id
        if state.status == "done":
            select_model(state.result_path)
        st.rerun(scope="app")  # refresh the model lists and pickers of the whole page
    if state.status == "done":
        st.success(f"Trained **{state.request.display_name}** in {state.elapsed:.0f} s → "
                   f"`{Path(state.result_path).name}`", icon=":material/check_circle:")
    elif state.status == "cancelled":
        st.warning(f"Training {state.request.display_name!r} was stopped; nothing was saved.")
    else:
        st.error(f"Training {state.request.display_name!r} failed: {state.error}", icon=":material/warning:")


# Polls every second, but only while there is something to watch (an idle page does not rerun by itself).
_polling_monitor = st.fragment(run_every=1.0)(_monitor_body)


def training_monitor() -> None:
    """Progress of this session's training (or of one started elsewhere), live while one runs."""
    job_id = st.session_state.get("job_id")
    state = MANAGER.state(job_id) if job_id else None
    unseen = state is not None and st.session_state.get("job_seen") != state.job_id
    if MANAGER.active() is not None or unseen:
        _polling_monitor()
    else:
        _monitor_body()


def wait_note() -> None:
    """The caption under a training form."""
    st.caption("Training runs in the background: you may switch pages; its progress stays here.")
