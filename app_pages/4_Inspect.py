"""Inspect: one image in detail — original and heatmap with defect regions, the defect mask at a pixel threshold
you move live beside the ground truth (with their overlap), the method's own views (its panels: reconstructions,
feature errors…) or its reconstruction when it makes one, the regions' scores, and on request a Grad-CAM of the
score (which features it depends on) and the CAM of a defect classifier fitted on labelled images."""

from __future__ import annotations

import streamlit as st

from inspection.data.datasets import load_sample_mask
from inspection.explain.classifier import DIFFERENCE as CAM_DIFFERENCE
from inspection.explain.classifier import defect_classifier
from inspection.explain.classifier import unavailable_reason as classifier_unavailable
from inspection.explain.gradcam import DIFFERENCE, explanation_note, unavailable_reason
from inspection.results.image import (
    VERDICT_HELP,
    defect_mask_on_original,
    image_result,
    mask_picture,
    panel_picture,
    unfamiliar_notes,
)
from inspection.results.numbers import score_text
from inspection.scores.metrics import compare_masks
from inspection_app import caches, page, sidebar, teach_view
from inspection_app.browse import SPLITS, filter_samples
from inspection_app.inspect_view import (
    PANELS_PER_ROW,
    can_fit_classifier,
    classifier_caption,
    explain_targets,
    fit_classifier_on_dataset,
    is_wide,
    layer_labels,
    lowest_score,
    mask_slider_range,
    overlap_summary,
    panel_rows,
    picture_rows,
    truth_rows,
)
from inspection_app.uploads import UPLOAD_TYPES, content_digest, decode_upload, max_upload_mb

page.page_setup("Inspect", "One image in detail: what the model saw, where it finds anomalies, and which pixels are "
                "defects at a threshold you choose.")
dataset = sidebar.data_source_picker()
entry = sidebar.require_model(dataset)
teach_view.panel(entry)

origin = page.kept_radio(st, "Image", ["dataset", "upload"], "inspect_origin", horizontal=True,
                         format_func={"dataset": "From the dataset", "upload": "Upload"}.get)
image = name = image_key = None
sample = None
teachable = None
if origin == "upload":
    upload = st.file_uploader(f"Image ({', '.join(UPLOAD_TYPES)}; up to {max_upload_mb()} MB)",
                              type=list(UPLOAD_TYPES), max_upload_size=max_upload_mb(),
                              key="inspect_upload")
    if upload is not None:
        data = upload.getvalue()
        with page.user_errors():
            image, name, image_key = decode_upload(upload.name, data), upload.name, content_digest(data)
            teachable = teach_view.Teachable(upload.name, data=data)
elif dataset is None:
    st.info("Choose a dataset in the sidebar.")
else:
    split_column, type_column, file_column = st.columns([1, 1, 2])
    split = page.kept_selectbox(split_column, "Split", SPLITS, "inspect_split", default="test")
    types = ["all"] + sorted({sample.defect_type for sample in filter_samples(dataset, split)})
    defect_type = page.kept_selectbox(type_column, "Type", types, "inspect_type")
    samples = filter_samples(dataset, split, defect_type)
    if not samples:
        st.info("No image of this split and type.")
    else:
        by_name = {f"{sample.defect_type}/{sample.path.name}": sample for sample in samples}
        chosen = page.kept_selectbox(file_column, f"Image ({len(samples)})", list(by_name), "inspect_file")
        sample = by_name[chosen]
        with page.user_errors():
            image = caches.load_path_image(sample.path)
            name, image_key = f"{sample.split}/{chosen}", caches.file_key(sample.path)
            teachable = teach_view.Teachable(sample.path.name, path=sample.path)

if image is None:
    st.stop()

try:
    model = caches.model_of(entry)
    prediction = caches.predict_image(entry, image, image_key, panels=True)
    calibration = model.calibration
    if calibration is None:
        raise ValueError(f"{entry.path.name} has no calibration (thresholds): retrain it")
except Exception as error:  # noqa: BLE001
    page.show_error(error)
    st.stop()

saved_result = image_result(prediction, 0, image, name)
low, upper = mask_slider_range(saved_result)
# The range depends on the image: a slider whose bounds change is a new widget (its own key); the chosen value
# is kept per model, so the next image opens at the same threshold.
chosen_key = f"inspect-threshold-{entry.path.name}-{entry.modified}"
slider_key = f"{chosen_key}-{image_key}"
controls = st.columns([3, 1])
threshold = controls[0].slider("Pixel threshold (model scale: 0.5 = saved)", low, upper,
                               value=min(st.session_state.get(chosen_key, 0.5), upper), step=0.01, key=slider_key,
                               help="Pixels above it form the defect mask and the regions; the slider reaches the "
                                    "highest score in this image.")
st.session_state[chosen_key] = threshold
show_all = controls[1].toggle("Regions on good images too", value=False, key="inspect_all_regions",
                              help="A part judged good has no defects to outline; switch on to see its spots.")
raw_threshold = float(calibration.pixel_scale.denormalize(threshold))
result = image_result(prediction, 0, image, name, pixel_threshold=raw_threshold, regions_when_good=show_all)
mask = defect_mask_on_original(result, calibration, raw_threshold)

ground_truth = None
if sample is not None and (sample.label == 0 or sample.mask_path is not None):
    with page.user_errors():
        ground_truth = load_sample_mask(sample)
overlap = compare_masks(mask, ground_truth) if ground_truth is not None else None

figures = st.columns(5 if overlap is not None else 4)
figures[0].metric("Anomaly score", score_text(result.score), help="The saved image threshold is 0.5 on this scale.")
figures[1].metric("Verdict", result.verdict, help=VERDICT_HELP)
figures[2].metric("Defect regions", len(result.regions))
figures[3].metric("Defect area", f"{mask.mean():.2%}", help="Share of the image's pixels in the mask.")
if overlap is not None:
    label, value, explanation = overlap_summary(overlap, float(mask.mean()))
    figures[4].metric(label, value, help=explanation)
for note in unfamiliar_notes(result, calibration, model.info, dataset.category if dataset is not None else None):
    st.warning(note, icon=":material/help:")
st.caption(f"Scored by {entry.name}, {teach_view.model_version(model)} · threshold 0.5 (saved)")
if teachable is not None:
    teach_view.teach_buttons(entry, teachable, f"inspect-{image_key}", teach_view.decisions_for(entry),
                             suggested_type=sample.defect_type if sample is not None and sample.label == 1 else "",
                             container=st.columns([2, 3])[0])

# Two rows of two; a tall frame (taller than wide) in one row of four, so that the four fit on a screen or two.
cells = [cell for per_row in picture_rows(image.shape) for cell in st.columns(per_row)]
cells[0].image(image, caption=f"{name} · original {image.shape[1]}×{image.shape[0]}", width="stretch")
cells[1].image(result.overlay(), caption="Heatmap and defect regions (boxes labelled with their peak score)" + (
    " — not to be trusted: the image is unlike the training data" if result.unlike_training else ""), width="stretch")
cells[2].image(mask_picture(image, mask), caption=f"Defect mask at {score_text(threshold)}", width="stretch")
if ground_truth is not None:
    cells[3].image(mask_picture(image, ground_truth, color=(40, 200, 80)),
                   caption="Ground truth" + (" (good: no defect)" if sample.label == 0 else ""), width="stretch")
else:
    cells[3].caption("No ground truth for this image (an upload, or a defect without a mask).")
if result.panels:  # the method's own views (its reconstruction among them when it makes one), in its order
    st.subheader(f"What {model.label} sees")
    for row in panel_rows(result.panels):
        # A strip of frames spans the page; other panels share a row of equal columns (a short row stays narrow).
        columns = st.columns(1 if is_wide(row[0]) else PANELS_PER_ROW)
        for column, panel in zip(columns, row):
            column.image(panel_picture(panel), caption=panel.title, width="stretch")
            if panel.note:
                column.caption(panel.note)
elif result.reconstruction is not None:
    st.image(result.reconstruction, caption="Reconstruction (working resolution)", width=420)
else:
    st.caption(f"No reconstruction: {model.capabilities.no_reconstruction_reason}.")
page.colorbar(result.colour_max, uninspected=not result.fully_inspected, lowest=lowest_score(result.heatmap))

st.subheader("Defect regions")
if result.regions:
    st.dataframe(result.region_rows(), hide_index=True, width="stretch")
    st.caption("Boxes in original-image pixels; scores on the model's scale (the saved pixel threshold is 0.5).")
else:
    st.caption("No region above this threshold (regions smaller than 16 working-resolution pixels are ignored)."
               if result.is_defect or show_all else "Good part: no regions are outlined.")
if overlap is not None and overlap["truth_regions"]:
    st.subheader("Ground-truth regions")
    st.dataframe(truth_rows(overlap), hide_index=True)

st.subheader("Grad-CAM of the score")
st.caption(DIFFERENCE)
reason = unavailable_reason(model)
if reason is not None:
    st.info(reason, icon=":material/info:")
elif st.toggle("Explain the score", value=False, key="inspect_explain",
               help="Computed on request (one backward pass through the network), then kept."):
    labels = layer_labels(model)
    targets = explain_targets(result)
    if explanation_note(model):
        st.caption(explanation_note(model))
    controls = st.columns([2, 2, 1])
    layer = page.kept_selectbox(controls[0], "Layer", list(labels), "inspect_explain_layer",
                                default=list(labels)[-1], format_func=labels.get,
                                help="Deeper layers see larger, more abstract patterns; shallower ones are finer.")
    target = page.kept_selectbox(controls[1], "Score", list(targets), "inspect_explain_target",
                                 help="The image score, or a region's: the anomaly map's maximum inside its box.")
    guided = controls[2].toggle("Guided Grad-CAM", value=False, key="inspect_explain_guided",
                                help="Times guided backpropagation's saliency (only positive gradients back through "
                                     "the backbone's ReLUs): finer detail.")
    with page.user_errors():
        explanation = caches.explain(entry, image, image_key, layer, targets[target], guided)
        pictures = st.columns(2)
        pictures[0].image(result.overlay(), caption="Anomaly map", width="stretch")
        pictures[1].image(explanation.overlay(image, guided),
                          caption=f"{'Guided Grad-CAM' if guided else 'Grad-CAM'} of {target} at {labels[layer]}",
                          width="stretch")
        st.caption("Grad-CAM colours run from blue (0) to red (1, this map's strongest attribution): a scale of its "
                   "own, not the model's. Its channel weights are the score's gradient averaged over the layer, so "
                   "it can also light up places that share the features of the worst spot.")

st.subheader("Defect classifier (CAM)")
st.caption(CAM_DIFFERENCE)
if classifier_unavailable(model) is not None:
    st.info(classifier_unavailable(model), icon=":material/info:")
elif defect_classifier(model) is None:
    can_fit = can_fit_classifier(dataset)
    st.caption("This model has no defect classifier. Fit one from labelled images with `python -m inspection "
               "classifier --model … --good FOLDER --defect FOLDER`" +
               (", or here from the open dataset's labelled test images (the CAM is then shown on images it learned "
                "from)." if can_fit else "."))
    if can_fit and st.button("Fit a defect classifier on the test images", key="inspect_fit_classifier"):
        with page.user_errors(), st.spinner("Fitting the defect classifier…"):
            record = fit_classifier_on_dataset(model, dataset, entry.path)
            st.toast(f"Defect classifier fitted: cross-validated accuracy {record['cv_accuracy']:.0%}")
            st.rerun()
elif st.toggle("Show the classifier's CAM", value=False, key="inspect_cam"):
    with page.user_errors():
        found = caches.classifier_cam(entry, image, image_key)
        pictures = st.columns(2)
        pictures[0].image(result.overlay(), caption="Anomaly map", width="stretch")
        pictures[1].image(found.overlay(image), caption=classifier_caption(defect_classifier(model).record,
                                                                           found.probability), width="stretch")
        st.caption("CAM colours run from blue (0) to red (1, this image's strongest evidence for a defect): a scale "
                   "of its own. The model's threshold, not this head, decides good or defect.")
