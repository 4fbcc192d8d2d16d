"""The frame of every page: title and caption, the compute device, errors as messages (never a traceback),
the shared colour bar, and widgets whose value survives page switches."""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from inspection.device import configure_threads, describe_device, resolve_device
from inspection.errors import friendly_error, is_user_error

from .charts import colorbar_figure
from .jobs import MANAGER

APP_NAME = "Visual inspection"


def page_setup(title: str, caption: str) -> None:
    """Page config, title, a caption saying what the page is for, and the device in the sidebar."""
    st.set_page_config(page_title=f"{title} · {APP_NAME}", page_icon="🔍", layout="wide")
    configure_threads()  # the cores this server may use (trainings run in processes of their own)
    st.title(title)
    st.caption(caption)
    device = resolve_device("auto")
    note = "" if device.type == "cuda" else " · no GPU found, computing on the CPU"
    st.sidebar.caption(f"Compute: **{describe_device(device)}**{note}")
    if MANAGER.active() is not None:
        with st.sidebar:
            _training_status()


@st.fragment(run_every=2.0)
def _training_status() -> None:
    """While a training runs (started in any browser session), its progress in the sidebar, live."""
    active = MANAGER.active()
    if active is None:
        st.caption("The training has ended.")
    else:
        st.progress(active.fraction, text=f"Training {active.request.display_name}: {active.describe()}")


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


def calm_label(lowest: float | None = None) -> str:
    """The colour bar's left label: "0 calm", or "≤ 0 calm" when the heatmaps above have scores below 0 (`lowest`,
    their lowest score): those are drawn in 0's colour, and the bar must not suggest that the scale starts at 0."""
    return "≤ 0 calm" if lowest is not None and lowest < 0 else "0 calm"


def colorbar_with_floor(vmax: float, lowest: float | None = None) -> Any:
    """The colour bar's figure (charts.colorbar_figure), its left label honest about scores below 0."""
    figure = colorbar_figure(vmax)
    ticks = list(figure.layout.xaxis.ticktext)
    figure.update_xaxes(ticktext=[calm_label(lowest), *ticks[1:]])
    return figure


def colorbar(vmax: float, key: str = "colorbar", uninspected: bool = True, lowest: float | None = None) -> None:
    """The colour scale of the heatmaps above it (up to `vmax`), with what its colours mean; the grey hatching
    explained only when some heatmap above has parts the model did not inspect. `lowest`, the heatmaps' lowest
    score when known: below 0, the bar's left end reads "≤ 0" and the caption says so."""
    below = lowest is not None and lowest < 0
    st.plotly_chart(colorbar_with_floor(vmax, lowest), config={"displayModeBar": False}, key=key)
    st.caption("Heatmap colours: " + (f"0 and below (down to {lowest:.2g} here) is a calm good surface, all in the "
                                      "same colour" if below else "0 is a calm good surface")
               + f"; the middle colour (0.5) is the model's saved pixel threshold — above it a pixel belongs to a "
               f"defect; the top ({vmax:.2g}) is a high score of the model's defects when it was tested."
               + (" Grey hatching: not inspected (outside the crop)." if uninspected else ""))


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
