"""Threshold: where to draw the line. Score distributions and ROC curves (image and pixel level), a threshold slider
zoomed on the decision zone with an exact number beside it, the target FPR kept in step, live rates and confusion
matrix, the test images a threshold gets wrong, and saving it into the model file."""

from __future__ import annotations

import streamlit as st

from inspection.model.modelfile import read_model_header, save_thresholds
from inspection.model.operating import promise_check
from inspection.workflows.recalibrate import good_images_in, recalibrate, undo_recalibration
from inspection_app import caches, page, sidebar, teach_view
from inspection_app.charts import roc_figure, score_histogram
from inspection_app.threshold_view import (
    FIELD_RATE_RANGE,
    LEVELS,
    confusion_rows,
    field_rate,
    format_rate,
    threshold_level,
)

page.page_setup("Threshold", "Where to draw the line between good and defect. The histograms show how the model "
                "scores good and defect test images; the ROC curve what each threshold costs (false alarms, x) "
                "and gains (defects found, y). Scores are on the model's scale, on which the saved threshold is "
                "always 0.5.")
dataset = sidebar.data_source_picker()
entry = sidebar.require_model(dataset)
teach_view.panel(entry)
decisions = teach_view.decisions_for(entry)

level_name = page.kept_radio(st, "Level", list(LEVELS), "threshold_level", horizontal=True,
                             format_func={"image": "Image level (verdict)", "pixel": "Pixel level (defect mask)"}.get)
try:
    view = threshold_level(read_model_header(entry.path), level_name)
except Exception as error:  # noqa: BLE001
    page.show_error(error)
    st.stop()
image_level = view.image_level
suffix = f"{entry.path.name}-{entry.modified}-{level_name}"
slider_key, number_key, fpr_key = f"threshold-{suffix}", f"threshold-number-{suffix}", f"target-fpr-{suffix}"
widen = st.toggle("Widen the slider to every score", key=f"widen-{suffix}",
                  help="The slider first spans the decision zone: from the low scores to where the good scores end "
                       "and half the defects are passed.")
low, high = view.slider_range() if widen else view.decision_range()


def clamp(value: float) -> float:
    return float(min(max(value, low), high))


def held_out_rate(normalised: float) -> float:
    """The FPR the target field shows at a threshold: promised on new good images (image level; split-conformal
    from the held-out scores), measured on the held-out good pixels (pixel level)."""
    point_there = view.point(view.raw(normalised))
    return field_rate(point_there.promised_fpr if image_level else point_there.heldout_fpr, view.saved_target_fpr)


def from_slider() -> None:
    st.session_state[number_key] = st.session_state[slider_key]
    st.session_state[fpr_key] = held_out_rate(st.session_state[slider_key])


def from_number() -> None:
    st.session_state[slider_key] = clamp(st.session_state[number_key])
    st.session_state[fpr_key] = held_out_rate(st.session_state[number_key])


def from_target_fpr() -> None:
    """Move the threshold to where the held-out FPR meets the typed target (runs before the rerun)."""
    try:
        raw = view.threshold_for_fpr(st.session_state[fpr_key])
    except ValueError as error:
        st.session_state["fpr_error"] = str(error)
        return
    st.session_state.pop("fpr_error", None)
    st.session_state[number_key] = float(view.scale.normalize(raw))
    st.session_state[slider_key] = clamp(st.session_state[number_key])


if slider_key not in st.session_state:
    st.session_state[slider_key] = clamp(view.saved_normalised)
    st.session_state[number_key] = view.saved_normalised
    st.session_state[fpr_key] = view.saved_target_fpr
st.session_state[slider_key] = clamp(st.session_state[slider_key])  # the range may just have changed

controls, exact_column, target_column = st.columns([4, 1, 1])
controls.slider("Threshold (model scale: 0.5 = saved)", min_value=low, max_value=high, step=0.001, key=slider_key,
                format="%.3f", on_change=from_slider, help="Above the threshold: defect.")
exact_column.number_input("Exact threshold", step=0.01, format="%.3f", key=number_key, on_change=from_number,
                          help="Type a threshold; it may lie outside the slider's range.")
target_column.number_input(
    "Target FPR (promised on new good)" if image_level else "Target FPR (held-out good)",
    min_value=FIELD_RATE_RANGE[0], max_value=FIELD_RATE_RANGE[1], step=0.01, format="%.4f", key=fpr_key,
    on_change=from_target_fpr,
    help="Typing one moves the threshold there; moving the threshold updates it. Image level: the false-alarm "
         "rate promised on new good parts (split-conformal, from the held-out good images). Pixel level: the "
         "false-positive rate on the held-out good pixels.")
if "fpr_error" in st.session_state:
    st.error(st.session_state["fpr_error"])
st.caption(view.saved_words)
threshold_normalised = float(st.session_state[number_key])
raw_threshold = view.raw(threshold_normalised)
point = view.point(raw_threshold)
target_note = view.target_note(st.session_state[fpr_key], raw_threshold)
if target_note:  # a target the held-out good images cannot support: say why the promise is weaker
    st.info(target_note, icon=":material/info:")

metrics = st.columns(4)
metrics[0].metric("FPR (test)", format_rate(point.fpr), help="Share of good test images (pixels) flagged as defect.")
metrics[1].metric("TPR (test)", format_rate(point.tpr), help="Share of defect test images (pixels) found.")
metrics[2].metric("Precision (test)", format_rate(point.precision),
                  help="Share of flagged images that are defects." if image_level else
                  "Needs the pixel counts of the test split (not recorded in this model file).")
check = None  # the good test images against the promise (image level)
if image_level:
    metrics[3].metric("Promised FPR (new good)", format_rate(point.promised_fpr),
                      help="At most this share of new good parts is flagged, on average (split-conformal: from "
                           f"the ranks of the {len(view.calibration.heldout_scores)} good training images held "
                           "out from fitting).")
    if point.n_good:
        interval_low, interval_high = point.fpr_interval
        st.caption(f"Measured on the {point.n_good} {view.unseen_good_words}: {format_rate(point.fpr)} flagged "
                   f"(95 % interval {format_rate(interval_low)} to {format_rate(interval_high)}).")
    backing = teach_view.promise_backing(decisions, view.calibration)
    if backing:
        st.caption(backing)
    library = teach_view.library_line(teach_view.library_scores(str(entry.path), entry.modified), raw_threshold)
    if library:
        st.caption(library)
    check = promise_check(point.promised_fpr, point)
    if check is not None:
        (st.warning if check[0] == "warning" else st.info)(check[1])
else:
    metrics[3].metric("FPR held-out good", format_rate(point.heldout_fpr),
                      help="Measured on the pixels of the good training images held out from fitting.")

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

confusion, saving = st.columns([1, 1])
with confusion:
    st.subheader("Confusion matrix")
    rows = confusion_rows(point, counts=view.counts_known)
    if rows:
        st.dataframe(rows, hide_index=True)
        if not view.counts_known:
            st.caption("Pixel level: each row is the share of that class's pixels.")
with saving:
    st.subheader("Save")
    st.caption(f"Saved threshold: 0.500 (raw {view.saved_raw:.5g}); chosen: {threshold_normalised:.3f} (raw "
               f"{raw_threshold:.5g}). After saving, the chosen threshold is the new 0.5 on every page.")
    if st.button("Save threshold", type="primary", disabled=view.is_saved(raw_threshold), key="save_threshold",
                 help="Writes the chosen threshold into the model file; every page uses it from now on. The file "
                      "then says it was set by hand and states what it keeps on the held-out good images, not the "
                      "target of fit."):
        with page.user_errors():
            if image_level:
                save_thresholds(entry.path, image_threshold=raw_threshold)
            else:
                save_thresholds(entry.path, pixel_threshold=raw_threshold)
            st.toast("Threshold saved into the model file, marked as set by hand.")
            st.rerun()

shifted = check is not None and check[0] == "warning"
with st.expander("Recalibrate on new good parts (no retraining)", expanded=shifted):
    st.caption("When the pictures change — new lighting, a new camera, a new batch — good parts may score higher "
               "than the ones the model was calibrated on. Point to a folder of recent good parts (at least 10): "
               "both thresholds are set again from them by the model's own rules (those of fit for a threshold set "
               "by hand); the model itself is unchanged, and the old thresholds stay in its file, ready to be "
               "brought back.")
    folder = st.text_input("Folder of new good images", key=f"recalibrate-folder-{suffix}",
                           placeholder="/path/to/recent/good/parts")
    if st.button("Recalibrate", disabled=not folder.strip(), key="recalibrate"):
        with page.user_errors():
            images = good_images_in(folder)
            with st.spinner(f"Scoring {len(images)} good images…"):
                recalibrate(entry.path, images)
            st.toast(f"Recalibrated on {len(images)} good images; the old thresholds are kept.")
            st.rerun()
    if view.calibration.history:
        last = view.calibration.history[-1]
        st.caption(f"Last recalibration {last['replaced'] or ''}: {last['reason']} (thresholds before it: image "
                   f"{last['image_threshold']:.5g}, pixel {last['pixel_threshold']:.5g}).")
        if st.button("Undo the last recalibration", key="undo_recalibration"):
            with page.user_errors():
                undo_recalibration(entry.path)
                st.toast("The thresholds before the last recalibration are back.")
                st.rerun()

if image_level and view.table.scores.size:
    false_alarms, misses = view.errors_at(raw_threshold)
    st.subheader(f"At this threshold: {len(false_alarms)} false alarm(s), {len(misses)} miss(es)")
    if decisions:
        st.caption(f"Test scores as recorded when the model was evaluated, before the {len(decisions)} decision(s) "
                   f"taught since (the model is now {teach_view.version_of(entry) or 'changed'}): the images taught "
                   "are marked below; **Inspect** scores one with the model as it is now.")
    for title, records in (("False alarms (good parts flagged)", false_alarms), ("Misses (defects passed)", misses)):
        if not records:
            continue
        st.markdown(f"**{title}**")
        columns = st.columns(6)
        for index, record in enumerate(records[:6]):
            with columns[index], page.user_errors():
                path = sidebar.model_image_path(entry, record["file"])
                st.image(caches.cached_thumbnail(str(path), path.stat().st_mtime), width="stretch",
                         caption=view.error_caption(record))
                if st.button("Inspect", key=f"inspect-{record['file']}", icon=":material/zoom_in:",
                             on_click=sidebar.inspect_model_image, args=(entry, record["file"], record["type"])):
                    st.switch_page("app_pages/4_Inspect.py")
                false_alarm = record["label"] == 0
                teach_view.teach_buttons(entry, teach_view.Teachable(path.name, path=path), record["file"],
                                         decisions, good=false_alarm, defect=not false_alarm,
                                         defect_type=None if false_alarm else record["type"], compact=True)
        if len(records) > 6:
            st.caption(f"…and {len(records) - 6} more.")
