"""Plotly figures of the app: score histograms, ROC curves with the current point, training loss, colour bar.

Built here (not in the pages) so that their content is testable without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from inspection.visualize import SCALE_MAX, SCALE_MIN, colorize

GOOD_COLOR = "#2b8a3e"
DEFECT_COLOR = "#c92a2a"
POINT_COLOR = "#1c7ed6"
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=40, b=45), height=330,
               legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))


def score_histogram(good: Sequence[float], defect: Sequence[float], threshold: float, title: str,
                    x_label: str = "anomaly score (threshold 0.5 = saved)", weights_are_quantiles: bool = False,
                    n_bins: int = 40) -> go.Figure:
    """Overlaid histograms of good vs defect scores, with the threshold as a vertical line.

    With `weights_are_quantiles`, the inputs are evenly spaced quantiles of many values (pixels): their
    histogram, normalised, approximates the distribution of all those values.
    """
    figure = go.Figure()
    histnorm = "probability" if weights_are_quantiles else None
    good, defect = np.asarray(good, dtype=np.float64), np.asarray(defect, dtype=np.float64)
    both = np.concatenate([good, defect])
    both = both[np.isfinite(both)]
    # One set of bins for both classes, so that their bars line up and compare.
    low, high = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    bins = go.histogram.XBins(start=low, end=high + 1e-9, size=max(high - low, 1e-9) / n_bins)
    for values, name, color in ((good, "good", GOOD_COLOR), (defect, "defect", DEFECT_COLOR)):
        if values.size:
            figure.add_trace(go.Histogram(x=values, name=f"{name} ({'share' if histnorm else values.size})",
                                          marker_color=color, opacity=0.6, xbins=bins, histnorm=histnorm))
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


def loss_figure(losses: Sequence[float]) -> go.Figure:
    """The training loss per reported step."""
    figure = go.Figure(go.Scatter(y=np.asarray(losses, np.float64), mode="lines", name="loss",
                                  line=dict(color=POINT_COLOR)))
    figure.update_layout(title="Training loss", xaxis_title="step", yaxis_title="loss",
                         **{**_LAYOUT, "height": 260})
    return figure


def shared_colorscale(steps: int = 11) -> list[list]:
    """The heatmaps' colour map (visualize.colorize) as a plotly colour scale, so both show the same colours."""
    positions = np.linspace(0.0, 1.0, steps)
    rgb = colorize(SCALE_MIN + positions[None, :] * (SCALE_MAX - SCALE_MIN))[0]
    return [[float(position), f"rgb({r},{g},{b})"] for position, (r, g, b) in zip(positions, rgb)]


def colorbar_figure(height: int = 70) -> go.Figure:
    """A horizontal colour bar of the shared heatmap scale, labelled (0 = calm, 0.5 = threshold, 1 = far above)."""
    values = np.linspace(SCALE_MIN, SCALE_MAX, 256)
    figure = go.Figure(go.Heatmap(z=values[None, :], x=values, colorscale=shared_colorscale(),
                                  showscale=False, hoverinfo="skip"))
    figure.update_layout(template="plotly_white", height=height, margin=dict(l=10, r=10, t=5, b=30))
    figure.update_yaxes(visible=False)
    figure.update_xaxes(range=[SCALE_MIN - 0.06, SCALE_MAX + 0.06])
    figure.update_xaxes(tickvals=[0, 0.25, 0.5, 0.75, 1.0],
                        ticktext=["0 calm", "0.25", "0.5 threshold", "0.75", "≥1 far above"])
    return figure
