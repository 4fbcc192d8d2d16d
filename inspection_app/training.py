"""Starting trainings from a page and following them: the default model, the refusal when one runs, progress."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from inspection.data.datasets import Dataset
from inspection.data.demo import DEMO_CATEGORY
from inspection.errors import InspectionError
from inspection.model.modelfile import read_model_header
from inspection.model.operating import promise_report
from inspection.registry import get_method

from .caches import cached_demo_root
from .charts import loss_figure
from .jobs import MANAGER, TrainingRequest
from .library import models_dir, unique_model_path
from .page import show_error
from .sidebar import select_model

DEFAULT_METHOD = "patchcore"


def default_training_request(dataset: Dataset | None = None) -> TrainingRequest:
    """PatchCore with EfficientNet-Lite0, every setting at its default, on the open dataset (else the demo)."""
    params = get_method(DEFAULT_METHOD).param_set().defaults()
    root = str(dataset.root) if dataset is not None else cached_demo_root()
    category = dataset.category if dataset is not None else DEMO_CATEGORY
    name = f"{category} {DEFAULT_METHOD} (default)"
    return TrainingRequest(DEFAULT_METHOD, params, root, None, str(unique_model_path(models_dir(), name)), name)


def is_demo(dataset: Dataset | None) -> bool:
    """Whether a dataset is the built-in demo data (a model of it knows nothing of a user's parts)."""
    return dataset is not None and Path(dataset.root).resolve() == Path(cached_demo_root()).resolve()


def training_running() -> bool:
    """Whether a training runs now (in any browser session): buttons that start one are disabled meanwhile."""
    return MANAGER.active() is not None


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
            st.plotly_chart(loss_figure(state.named_losses or state.losses), key="loss-live")
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
        try:
            header = read_model_header(state.result_path)
        except InspectionError:  # deleted or replaced since: the models table says what is there now
            return
        st.caption(promise_report(header.calibration, header.info.get("metrics") or {}))
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
    st.caption("Training runs in the background, in a process of its own: you may switch pages and inspect "
               "images meanwhile; its progress stays here and in the sidebar.")
