"""Inspect: one image side by side — original, reconstruction (or why there is none), heatmap overlay, the binary
defect mask at a pixel threshold you move live, the ground truth when known — and the defect regions' scores."""

from __future__ import annotations

import streamlit as st

from inspection.data.datasets import load_sample_mask
from inspection.registry import get_method
from inspection.results import defect_mask_on_original, image_result, mask_picture
from inspection_app import caches, page, sidebar
from inspection_app.browse import SPLITS, filter_samples
from inspection_app.uploads import UPLOAD_TYPES, content_digest, decode_upload, max_upload_mb

page.page_setup("Inspect", "One image in detail: what the model saw, where it finds anomalies, and which pixels are "
                "defects at a threshold you choose.")
dataset = sidebar.data_source_picker()
entry = sidebar.require_model()

origin = page.kept_radio(st, "Image", ["dataset", "upload"], "inspect_origin", horizontal=True,
                         format_func={"dataset": "From the dataset", "upload": "Upload"}.get)
image = name = image_key = None
sample = None
if origin == "upload":
    upload = st.file_uploader(f"Image ({', '.join(UPLOAD_TYPES)}; up to {max_upload_mb()} MB)",
                              type=list(UPLOAD_TYPES), max_upload_size=max_upload_mb(),
                              key="inspect_upload")
    if upload is not None:
        data = upload.getvalue()
        with page.user_errors():
            image, name, image_key = decode_upload(upload.name, data), upload.name, content_digest(data)
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
            name, image_key = sample.path.name, caches.file_key(sample.path)

if image is None:
    st.stop()

try:
    model = caches.model_of(entry)
    prediction = caches.predict_image(entry, image, image_key)
    calibration = model.calibration
    if calibration is None:
        raise ValueError(f"{entry.path.name} has no calibration (thresholds): retrain it")
except Exception as error:  # noqa: BLE001
    page.show_error(error)
    st.stop()

saved = float(calibration.normalized_pixel_threshold)
# The range depends on the model only: a slider whose bounds change is a new widget, and would lose its value.
upper = round(max(2.0, saved * 2), 2)
threshold_key = f"inspect-threshold-{entry.path.name}-{entry.modified}"
if threshold_key not in st.session_state:
    st.session_state[threshold_key] = saved
threshold = st.slider("Pixel threshold (model scale)", 0.0, upper, step=0.01, key=threshold_key,
                      help=f"Pixels above it form the defect mask; the model's saved pixel threshold is {saved:.2f}.")
raw_threshold = float(calibration.pixel_scale.denormalize(threshold))
result = image_result(prediction, 0, image, name, pixel_threshold=raw_threshold, regions_when_good=True)
mask = defect_mask_on_original(result, calibration, raw_threshold)

score_column, verdict_column, regions_column, area_column = st.columns(4)
score_column.metric("Anomaly score", f"{result.score:.3f}", help="Image threshold = 0.5 on this scale.")
verdict_column.metric("Verdict", result.verdict)
regions_column.metric("Defect regions", len(result.regions))
area_column.metric("Defect area", f"{mask.mean():.2%}", help="Share of the image's pixels in the mask.")

ground_truth = None
if sample is not None and (sample.label == 0 or sample.mask_path is not None):
    with page.user_errors():
        ground_truth = load_sample_mask(sample)

columns = st.columns(5 if ground_truth is not None else 4)
columns[0].image(image, caption=f"Original · {image.shape[1]}×{image.shape[0]}", width="stretch")
if result.reconstruction is not None:
    columns[1].image(result.reconstruction, caption="Reconstruction (working resolution)", width="stretch")
else:
    columns[1].info(f"No reconstruction: {get_method(model.name).no_reconstruction_reason}.")
columns[2].image(result.overlay(), caption="Heatmap and defect regions", width="stretch")
columns[3].image(mask_picture(image, mask), caption=f"Defect mask at {threshold:.2f}", width="stretch")
if ground_truth is not None:
    columns[4].image(mask_picture(image, ground_truth, color=(40, 200, 80)),
                     caption="Ground truth" + (" (good: no defect)" if sample.label == 0 else ""), width="stretch")
page.colorbar()

st.subheader("Defect regions")
if result.regions:
    st.dataframe(result.region_rows(), hide_index=True, width="stretch")
    st.caption("Boxes in original-image pixels; scores on the model's scale (pixel threshold 0.5 when saved).")
else:
    st.caption("No region above this threshold (regions smaller than 16 working-resolution pixels are ignored).")
