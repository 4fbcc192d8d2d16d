"""Threshold: score distributions and ROC curves (image and pixel level), a threshold slider and a target FPR,
live rates and confusion matrix at that point, and saving the chosen threshold into the model file."""

from __future__ import annotations

import streamlit as st

from inspection.model.modelfile import read_model_header, save_thresholds
from inspection_app import page, sidebar
from inspection_app.charts import roc_figure, score_histogram
from inspection_app.threshold_view import LEVELS, confusion_rows, format_rate, threshold_level

page.page_setup("Threshold", "Where to draw the line between good and defect. The histograms show how the model "
                "scores good and defect test images; the ROC curve what each threshold costs (false alarms, x) "
                "and gains (defects found, y). Scores are on the model's fixed scale, on which the saved threshold "
                "was 0.5 when it was trained.")
entry = sidebar.require_model()

level_name = page.kept_radio(st, "Level", list(LEVELS), "threshold_level", horizontal=True,
                             format_func={"image": "Image level (verdict)", "pixel": "Pixel level (defect mask)"}.get)
try:
    view = threshold_level(read_model_header(entry.path), level_name)
except Exception as error:  # noqa: BLE001
    page.show_error(error)
    st.stop()
image_level = view.image_level
low, high = view.slider_range()
slider_key = f"threshold-{entry.path.name}-{entry.modified}-{level_name}"
fpr_key = f"target-fpr-{entry.path.name}-{level_name}"


def apply_target_fpr() -> None:
    """Move the slider to the threshold whose held-out FPR meets the typed target (runs before the rerun)."""
    try:
        raw = view.threshold_for_fpr(st.session_state[fpr_key])
    except ValueError as error:
        st.session_state["fpr_error"] = str(error)
        return
    st.session_state.pop("fpr_error", None)
    st.session_state[slider_key] = float(min(max(float(view.scale.normalize(raw)), low), high))


if slider_key not in st.session_state:
    st.session_state[slider_key] = float(min(max(view.saved_normalised, low), high))
if fpr_key not in st.session_state:
    st.session_state[fpr_key] = view.saved_target_fpr

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
raw_threshold = view.raw(threshold_normalised)
point = view.point(raw_threshold)

metrics = st.columns(5)
metrics[0].metric("FPR (test)", format_rate(point.fpr), help="Share of good test images (pixels) flagged as defect.")
metrics[1].metric("TPR (test)", format_rate(point.tpr), help="Share of defect test images (pixels) found.")
metrics[2].metric("Precision (test)", format_rate(point.precision),
                  help="Share of flagged images that are defects." if image_level else
                  "Needs the pixel counts of the test split (not recorded in this model file).")
metrics[3].metric("FPR held-out good", format_rate(point.heldout_fpr),
                  help="Measured on the good training images held out from fitting.")
metrics[4].metric("Target FPR", format_rate(st.session_state[fpr_key]))

if not view.has_test:
    st.warning("This model was not evaluated on a test split with good and defect "
               f"{'images' if image_level else 'pixels (masks)'}: only the held-out FPR can be shown.")

left, right = st.columns(2)
with left:
    histogram = view.histogram()
    st.plotly_chart(score_histogram(histogram["good"], histogram["defect"], threshold_normalised, histogram["title"],
                                    weights_are_quantiles=histogram["weights_are_quantiles"]), key="histogram")
with right:
    if view.has_test:
        curve, auc = view.roc()
        st.plotly_chart(roc_figure(curve["fpr"], curve["tpr"], point.fpr, point.tpr,
                                   f"{'Image' if image_level else 'Pixel'}-level ROC (test split)", auc), key="roc")
    else:
        st.caption("No ROC curve without test images of both kinds.")

st.subheader("Confusion matrix at this threshold")
rows = confusion_rows(point, counts=view.counts_known)
if rows:
    st.dataframe(rows, hide_index=True)
    if not view.counts_known:
        st.caption("Pixel level: each row is the share of that class's pixels.")

st.caption(f"Saved threshold: {view.saved_normalised:.3f} (raw {view.saved_raw:.5g}); chosen: "
           f"{threshold_normalised:.3f} (raw {raw_threshold:.5g}).")
if st.button("Save threshold", type="primary", disabled=view.is_saved(raw_threshold), key="save_threshold",
             help="Writes the chosen threshold into the model file; every page uses it from now on."):
    with page.user_errors():
        if image_level:
            save_thresholds(entry.path, image_threshold=raw_threshold)
        else:
            save_thresholds(entry.path, pixel_threshold=raw_threshold)
        st.session_state.pop(slider_key, None)
        st.toast("Threshold saved into the model file.")
        st.rerun()
