"""Plotly figures of the app: score histograms, ROC curves with the current point, training loss, colour bar.

Built here (not in the pages) so that their content is testable without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from inspection.results.pictures import DEFECT_COLOR, GOOD_COLOR, SCALE_MAX, SCALE_MIN, THRESHOLD, colorize
from inspection.scores.histogram import histogram_range

POINT_COLOR = "#1c7ed6"
# Legends sit under the plot, never over its title.
_LAYOUT = dict(template="plotly_white", margin=dict(l=55, r=20, t=45, b=95), height=360,
               legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0))


def clip_for_display(values: np.ndarray, limit: float) -> tuple[np.ndarray, int]:
    """The values at most `limit`, and how many lie beyond it."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return values[values <= limit], int((values > limit).sum())


def score_histogram(good: Sequence[float], defect: Sequence[float], threshold: float, title: str,
                    x_label: str = "anomaly score (0.5 = the saved threshold)", weights_are_quantiles: bool = False,
                    n_bins: int = 40) -> go.Figure:
    """Overlaid histograms of good vs defect scores, with the threshold as a vertical line.

    The x axis ends at the far-out fence of all values (Q3 + 3 IQR, and always shows the threshold), so one
    outlier does not squeeze the decision zone into a few bins; the values beyond are counted in the legend. With
    `weights_are_quantiles`, the inputs are evenly spaced quantiles of many values (pixels): their
    histogram, normalised, approximates the distribution of all those values.
    """
    figure = go.Figure()
    histnorm = "probability" if weights_are_quantiles else None
    good, defect = np.asarray(good, dtype=np.float64), np.asarray(defect, dtype=np.float64)
    low, limit = histogram_range(np.concatenate([good, defect]), threshold)
    # One set of bins for both classes, so that their bars line up and compare.
    bins = go.histogram.XBins(start=low, end=limit + 1e-9, size=max(limit - low, 1e-9) / n_bins)
    for values, name, color in ((good, "good", GOOD_COLOR), (defect, "defect", DEFECT_COLOR)):
        shown, beyond = clip_for_display(values, limit)
        if values.size:
            count = "share" if histnorm else str(values.size)
            extra = f", {beyond} beyond {limit:.2f} not drawn" if beyond and not histnorm else ""
            extra = f", {beyond / values.size:.1%} beyond {limit:.2f} not drawn" if beyond and histnorm else extra
            figure.add_trace(go.Histogram(x=shown, name=f"{name} ({count}{extra})", marker_color=color,
                                          opacity=0.6, xbins=bins, histnorm=histnorm))
    figure.add_vline(x=float(threshold), line_width=2, line_dash="dash", line_color=POINT_COLOR,
                     annotation_text="threshold", annotation_position="top")
    figure.update_layout(barmode="overlay", title=title, xaxis_title=x_label,
                         yaxis_title="share of pixels" if histnorm else "images", **_LAYOUT)
    return figure


def roc_figure(fpr: Sequence[float], tpr: Sequence[float], point_fpr: float, point_tpr: float, title: str,
               auc: float | None = None) -> go.Figure:
    """ROC curve (FPR on x, TPR on y), the chance diagonal and the current operating point."""
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                line=dict(color="#adb5bd", dash="dot")))
    name = "ROC" + (f" (AUROC {auc:.3f})" if auc is not None and np.isfinite(auc) else "")
    figure.add_trace(go.Scatter(x=np.asarray(fpr, np.float64), y=np.asarray(tpr, np.float64), mode="lines",
                                name=name, line=dict(color="#343a40", width=2, shape="hv")))
    if np.isfinite(point_fpr) and np.isfinite(point_tpr):
        figure.add_trace(go.Scatter(x=[point_fpr], y=[point_tpr], mode="markers", name="current threshold",
                                    marker=dict(color=POINT_COLOR, size=13, line=dict(color="white", width=2))))
    figure.update_layout(title=title, xaxis_title="false-positive rate (good flagged)",
                         yaxis_title="true-positive rate (defects found)", **_LAYOUT)
    figure.update_xaxes(range=[-0.01, 1.01])
    figure.update_yaxes(range=[-0.01, 1.01])
    return figure


def loss_figure(losses: Sequence[float] | Mapping[str, Sequence[float]]) -> go.Figure:
    """The training loss per reported step: one curve, or one per named loss (e.g. generator, discriminator)."""
    curves = dict(losses) if isinstance(losses, Mapping) else {"loss": losses}
    figure = go.Figure()
    for index, (name, values) in enumerate(curves.items()):
        figure.add_trace(go.Scatter(y=np.asarray(values, np.float64), mode="lines", name=name,
                                    line=dict(color=POINT_COLOR) if index == 0 else None))
    figure.update_layout(title="Training loss", xaxis_title="step", yaxis_title="loss", showlegend=len(curves) > 1,
                         **{**_LAYOUT, "height": 260})
    return figure


def shared_colorscale(vmax: float = SCALE_MAX, steps: int = 21) -> list[list]:
    """The heatmaps' colour map (visualize.colorize) as a plotly colour scale over 0 … vmax."""
    values = np.linspace(SCALE_MIN, vmax, steps)
    rgb = colorize(values[None, :], vmax)[0]
    return [[float(position), f"rgb({r},{g},{b})"]
            for position, (r, g, b) in zip((values - SCALE_MIN) / (vmax - SCALE_MIN), rgb)]


def colorbar_figure(vmax: float = SCALE_MAX, height: int = 80) -> go.Figure:
    """A horizontal colour bar of the heatmap scale: 0 = calm, 0.5 = the threshold (the middle colour), vmax =
    the model's high score; positions follow the colours (the threshold in the middle)."""
    positions = np.linspace(0.0, 1.0, 256)
    figure = go.Figure(go.Heatmap(z=positions[None, :], x=positions, colorscale=shared_colorscale(1.0),
                                  showscale=False, hoverinfo="skip"))
    figure.update_layout(template="plotly_white", height=height, margin=dict(l=10, r=10, t=5, b=35))
    figure.update_yaxes(visible=False)
    quarter = THRESHOLD + (vmax - THRESHOLD) / 2
    figure.update_xaxes(range=[-0.04, 1.04], tickvals=[0, 0.25, 0.5, 0.75, 1.0],
                        ticktext=["0 calm", "0.25", "0.5 threshold", f"{quarter:.2g}", f"{vmax:.2g} high"])
    return figure


def control_chart(recent: Sequence[Mapping], threshold: float = THRESHOLD, window: int = 25) -> go.Figure:
    """The live scores against the threshold, frame by frame, with their rolling median: a drift in the line shows
    as the median creeping towards the threshold before it turns into false alarms."""
    figure = go.Figure()
    index = np.asarray([row["index"] for row in recent], dtype=np.int64)
    scores = np.asarray([row["score"] for row in recent], dtype=np.float64)
    flagged = np.asarray([row["verdict"] != "good" for row in recent], dtype=bool)
    figure.add_trace(go.Scatter(x=index, y=scores, mode="lines", name="score", line=dict(color=GOOD_COLOR, width=1)))
    if flagged.any():
        figure.add_trace(go.Scatter(x=index[flagged], y=scores[flagged], mode="markers", name="not good",
                                    marker=dict(color=DEFECT_COLOR, size=7)))
    if scores.size >= window:
        # The median of the last `window` frames at each frame (a sliding window, one array operation).
        medians = np.median(np.lib.stride_tricks.sliding_window_view(scores, window), axis=1)
        figure.add_trace(go.Scatter(x=index[window - 1:], y=medians, mode="lines", name=f"median of {window}",
                                    line=dict(color=POINT_COLOR, width=2)))
    figure.add_hline(y=float(threshold), line_width=2, line_dash="dash", line_color=DEFECT_COLOR,
                     annotation_text="threshold", annotation_position="top left")
    figure.update_layout(title="Scores, frame by frame", xaxis_title="frame", yaxis_title="anomaly score",
                         **_LAYOUT)
    return figure
