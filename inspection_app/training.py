"""Starting trainings from a page and following them: the default model, the refusal when one runs, progress."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from inspection.data.datasets import Dataset
from inspection.data.demo import DEMO_CATEGORY
from inspection.errors import InspectionError
from inspection.model.header import ModelHeader
from inspection.model.modelfile import read_model_header
from inspection.model.operating import promise_report, recorded_test_scores
from inspection.registry import get_method
from inspection.workflows.evaluate import unseen_good_rates

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


def current_metrics(header: ModelHeader) -> dict[str, Any]:
    """The metrics of a model file with what its thresholds do measured at the thresholds it has now: a threshold
    saved by hand (or recalibrated) since training makes the rates recorded at training wrong. The image rate on
    the unseen good images is measured again from their recorded scores; the false regions of a pixel threshold
    changed since, which the scores do not tell, are left out."""
    metrics: dict[str, Any] = dict(header.info.metrics or {})
    calibration = header.calibration
    if calibration is None:
        return metrics
    good = recorded_test_scores(header.info).good
    if metrics.get("n_unseen_good") and good.size:
        rates = unseen_good_rates(calibration, good, np.empty(0))  # as `evaluate` measures them, image level only
        metrics.update({key: rates[key] for key in ("n_unseen_good", "fpr_unseen_good", "fpr_unseen_good_ci")})
    if calibration.pixel_set_by_hand or calibration.history:
        metrics.pop("false_boxes_per_good_image", None)
        metrics.pop("pixel_fpr_unseen_good", None)
    return metrics


def trained_summary(header: ModelHeader) -> str:
    """What a just-trained model's thresholds promise and do, at the thresholds its file holds now."""
    if header.calibration is None:
        return ""
    return promise_report(header.calibration, current_metrics(header))


def same_model(path: str | os.PathLike | None, other: str | os.PathLike | None) -> bool:
    """Whether two model paths name the same file."""
    if not path or not other:
        return False
    try:
        return Path(path).resolve() == Path(other).resolve()
    except (OSError, RuntimeError):
        return str(path) == str(other)


def shows_trained_summary(result_path: str | None, selected: str | os.PathLike | None, tied: bool) -> bool:
    """Whether the summary of the session's finished training is shown: always where it is not tied to a model
    choice (the Train page), else only while the chosen model is the model it made (the home page: never the
    summary of one model above the results of another)."""
    return bool(result_path) and (not tied or same_model(result_path, selected))


def _monitor_body(selected: str | None = None, tied: bool = False) -> None:
    """Progress of the session's job, another session's running job, or how the session's last job ended (a
    finished one's summary only while `selected` is its model, when `tied`)."""
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
        if not shows_trained_summary(state.result_path, selected, tied):
            return
        st.success(f"Trained **{state.request.display_name}** in {state.elapsed:.0f} s → "
                   f"`{Path(state.result_path).name}`", icon=":material/check_circle:")
        try:
            header = read_model_header(state.result_path)
        except InspectionError:  # deleted or replaced since: the models table says what is there now
            return
        st.caption(trained_summary(header))
    elif state.status == "cancelled":
        st.warning(f"Training {state.request.display_name!r} was stopped; nothing was saved.")
    else:
        st.error(f"Training {state.request.display_name!r} failed: {state.error}", icon=":material/warning:")


# Polls every second, but only while there is something to watch (an idle page does not rerun by itself).
_polling_monitor = st.fragment(run_every=1.0)(_monitor_body)


def training_monitor(selected: Any = None, *, tied: bool = False) -> None:
    """Progress of this session's training (or of one started elsewhere), live while one runs. `tied`: the
    summary of a finished training shows only while `selected` (the chosen model: a ModelEntry or a path) is
    the model it made, with the thresholds that model has now."""
    job_id = st.session_state.get("job_id")
    state = MANAGER.state(job_id) if job_id else None
    unseen = state is not None and st.session_state.get("job_seen") != state.job_id
    chosen = str(getattr(selected, "path", selected)) if selected is not None else None
    if MANAGER.active() is not None or unseen:
        _polling_monitor(chosen, tied)
    else:
        _monitor_body(chosen, tied)


def wait_note() -> None:
    """The caption under a training form."""
    st.caption("Training runs in the background, in a process of its own: you may switch pages and inspect "
               "images meanwhile; its progress stays here and in the sidebar.")
