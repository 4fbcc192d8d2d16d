"""Threshold: score distributions and ROC curves (image and pixel level), a threshold slider and a target FPR,
live rates and confusion matrix at that point, and saving the chosen threshold into the model file."""

from __future__ import annotations

import math

import streamlit as st

import app_ui as ui
from inspection.base import Calibration, read_model_info, save_thresholds
from inspection.charts import roc_figure, score_histogram
from inspection.metrics import image_auroc
from inspection.threshold import ScoreScale
from inspection.views import (confusion_rows, format_rate, image_operating_point, image_roc,
                              image_threshold_for_fpr, pixel_operating_point, pixel_roc, pixel_summary,
                              pixel_threshold_for_fpr, slider_bounds, recorded_test_scores)

ui.page_setup("Threshold", "Where to draw the line between good and defect. The histograms show how the model "
              "scores good and defect test images; the ROC curve what each threshold costs (false alarms, x) and "
              "gains (defects found, y). Scores are on the model's fixed scale, on which the saved threshold was 0.5 "
              "when it was trained.")
entry = ui.require_model()

try:
    header = read_model_info(entry.path)
    if not header.get("calibration"):
        raise ValueError(f"{entry.path.name} has no calibration (thresholds): retrain it")
    calibration = Calibration.from_dict(header["calibration"])
except Exception as error:  # noqa: BLE001
    ui.show_error(error)
    st.stop()
info = header.get("info") or {}

level = ui.kept_radio(st, "Level", ["image", "pixel"], "threshold_level", horizontal=True,
                      format_func={"image": "Image level (verdict)", "pixel": "Pixel level (defect mask)"}.get)
image_level = level == "image"
scale: ScoreScale = calibration.image_scale if image_level else calibration.pixel_scale
saved_raw = calibration.image_threshold if image_level else calibration.pixel_threshold
table = recorded_test_scores(info)
summary = pixel_summary(info)

if image_level:
    reference_values = list(scale.normalize(table.scores)) + list(scale.normalize(calibration.heldout_scores))
else:
    reference_values = list(scale.normalize(summary.good[::10])) + list(scale.normalize(summary.defect[::10]))
saved_normalised = float(scale.normalize(saved_raw))
low, high = slider_bounds(reference_values, saved_normalised)
slider_key = f"threshold-{entry.path.name}-{entry.modified}-{level}"
fpr_key = f"target-fpr-{entry.path.name}-{level}"


def apply_target_fpr() -> None:
    """Move the slider to the threshold whose held-out FPR meets the typed target (runs before the rerun)."""
    try:
        target = st.session_state[fpr_key]
        raw = (image_threshold_for_fpr(calibration, target) if image_level
               else pixel_threshold_for_fpr(calibration, target))
    except ValueError as error:
        st.session_state["fpr_error"] = str(error)
        return
    st.session_state.pop("fpr_error", None)
    st.session_state[slider_key] = float(min(max(float(scale.normalize(raw)), low), high))


if slider_key not in st.session_state:
    st.session_state[slider_key] = float(min(max(saved_normalised, low), high))
if fpr_key not in st.session_state:
    st.session_state[fpr_key] = float(calibration.image_fpr if image_level else calibration.pixel_fpr)

controls, target_column = st.columns([3, 1])
threshold_normalised = controls.slider("Threshold (model scale)", min_value=low, max_value=high, step=0.001,
                                       key=slider_key, format="%.3f",
                                       help="Above the threshold: defect. 0.5 was the threshold saved at training.")
target_column.number_input("Target FPR on held-out good", min_value=1e-4, max_value=0.9999, step=0.01,
                           format="%.4f", key=fpr_key, on_change=apply_target_fpr,
                           help="Type a false-positive rate: the slider moves to the threshold that meets it on "
                                "the held-out good images (never seen in training).")
if "fpr_error" in st.session_state:
    st.error(st.session_state["fpr_error"])
raw_threshold = float(scale.denormalize(threshold_normalised))

if image_level:
    point = image_operating_point(table, calibration, raw_threshold)
else:
    point = pixel_operating_point(summary, calibration, raw_threshold)

metrics = st.columns(5)
metrics[0].metric("FPR (test)", format_rate(point.fpr), help="Share of good test images (pixels) flagged as defect.")
metrics[1].metric("TPR (test)", format_rate(point.tpr), help="Share of defect test images (pixels) found.")
metrics[2].metric("Precision (test)", format_rate(point.precision),
                  help="Share of flagged images that are defects." if image_level else
                  "Needs the pixel counts of the test split (not recorded in this model file).")
metrics[3].metric("FPR held-out good", format_rate(point.heldout_fpr),
                  help="Measured on the good training images held out from fitting.")
metrics[4].metric("Target FPR", format_rate(st.session_state[fpr_key]))

has_test = table.has_both_classes if image_level else summary.available
if not has_test:
    st.warning("This model was not evaluated on a test split with good and defect "
               f"{'images' if image_level else 'pixels (masks)'}: only the held-out FPR can be shown.")

left, right = st.columns(2)
with left:
    if image_level:
        good = scale.normalize(table.good) if table.scores.size else scale.normalize(calibration.heldout_scores)
        histogram = score_histogram(good, scale.normalize(table.defect), threshold_normalised,
                                    "Image scores of the test split" if table.scores.size
                                    else "Image scores of held-out good images")
    else:
        histogram = score_histogram(scale.normalize(summary.good if summary.good.size
                                                    else calibration.heldout_pixel_quantiles),
                                    scale.normalize(summary.defect), threshold_normalised,
                                    "Pixel scores of the test split", weights_are_quantiles=True)
    st.plotly_chart(histogram, key="histogram")
with right:
    if has_test:
        if image_level:
            curve = image_roc(table)
            auc = image_auroc(table.scores, table.labels)
        else:
            curve = pixel_roc(summary)
            auc = info.get("metrics", {}).get("pixel_auroc")
        st.plotly_chart(roc_figure(curve["fpr"], curve["tpr"], point.fpr, point.tpr,
                                   f"{'Image' if image_level else 'Pixel'}-level ROC (test split)", auc), key="roc")
    else:
        st.caption("No ROC curve without test images of both kinds.")

st.subheader("Confusion matrix at this threshold")
counts_known = image_level or bool(summary.counts)
rows = confusion_rows(point, counts=counts_known)
if rows:
    st.dataframe(rows, hide_index=True)
    if not counts_known:
        st.caption("Pixel level: each row is the share of that class's pixels.")

changed = not math.isclose(raw_threshold, saved_raw, rel_tol=1e-9, abs_tol=1e-12)
st.caption(f"Saved threshold: {saved_normalised:.3f} (raw {saved_raw:.5g}); chosen: {threshold_normalised:.3f} "
           f"(raw {raw_threshold:.5g}).")
if st.button("Save threshold", type="primary", disabled=not changed, key="save_threshold",
             help="Writes the chosen threshold into the model file; every page uses it from now on."):
    with ui.user_errors():
        if image_level:
            save_thresholds(entry.path, image_threshold=raw_threshold)
        else:
            save_thresholds(entry.path, pixel_threshold=raw_threshold)
        st.session_state.pop(slider_key, None)
        st.toast("Threshold saved into the model file.")
        st.rerun()
