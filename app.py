"""Home: upload images (or pick one from the dataset) and a model → heatmap, anomaly score, verdict, defect regions.

Run with ``streamlit run app.py``. Works with no configuration: the built-in demo dataset is generated on
first start and the default model (PatchCore, EfficientNet-Lite0) is trained in one click — or on first use.
"""

from __future__ import annotations

import streamlit as st

from inspection.results import image_result
from inspection_app import caches, page, sidebar, training
from inspection_app.browse import sample_label
from inspection_app.jobs import MANAGER
from inspection_app.uploads import UPLOAD_TYPES, content_digest, decode_upload, max_upload_mb

page.page_setup("Visual inspection", "Upload images of a part and pick a trained model: the heatmap shows where "
                "the model sees anomalies, the score and verdict say whether the image is a defect at the model's "
                "threshold, and boxes outline the defect regions.")
dataset = sidebar.data_source_picker()
st.sidebar.header("Model")
entries = sidebar.model_entries()
entry = sidebar.model_picker(entries)

if not entries:
    st.info("No trained model yet. The default model — PatchCore on EfficientNet-Lite0 features of the built-in "
            "demo dataset — trains in well under a minute on a CPU. It is also trained automatically when you "
            "upload an image. Other methods and settings: **Train** page.", icon=":material/info:")
    if st.button("Train the default model", type="primary", key="train_default", icon=":material/rocket_launch:"):
        training.start_training(training.default_training_request())
training.training_monitor()

origin = page.kept_radio(st, "Images", ["upload", "dataset"], "home_origin", horizontal=True,
                         format_func={"upload": "Upload", "dataset": "Pick from the dataset"}.get)
images: list[tuple[str, str, object]] = []  # (name, cache key, RGB array)
if origin == "upload":
    uploads = st.file_uploader(f"Images to inspect ({', '.join(UPLOAD_TYPES)}; up to {max_upload_mb()} MB each)",
                               type=list(UPLOAD_TYPES), max_upload_size=max_upload_mb(), accept_multiple_files=True,
                               key="home_upload")
    for upload in uploads or []:
        data = upload.getvalue()
        with page.user_errors():
            images.append((upload.name, content_digest(data), decode_upload(upload.name, data)))
elif dataset is None:
    st.info("Choose a dataset in the sidebar to pick images from it.")
elif not dataset.test:
    st.info(f"The dataset {dataset.category!r} has no test images to pick from.")
else:
    by_label = {sample_label(sample): sample for sample in dataset.test}
    chosen = page.kept_selectbox(st, "Test image", list(by_label), "home_sample")
    sample = by_label[chosen]
    with page.user_errors():
        images.append((sample.path.name, caches.file_key(sample.path), caches.load_path_image(sample.path)))

if images and not entries:
    own_job = st.session_state.get("job_id")
    state = MANAGER.state(own_job) if own_job else None
    if state is None and MANAGER.active() is None:  # first use: train the default model now
        if training.start_training(training.default_training_request()):
            st.rerun()
    elif state is None or state.active:
        st.info("Training the default model first (first use); the results appear here when it is done.")
    st.stop()

if images and entry is not None:
    results = []
    for index, (name, key, image) in enumerate(images):
        with st.container(border=True, key=f"result-{index}"):
            with page.user_errors():
                prediction = caches.predict_image(entry, image, key)
                result = image_result(prediction, 0, image, name)
                results.append(result)
                picture, facts = st.columns([3, 2])
                picture.image(result.overlay(), caption=f"{name}: heatmap and defect regions",
                              width="stretch")
                facts.subheader(name)
                score_column, verdict_column = facts.columns(2)
                score_column.metric("Anomaly score", f"{result.score:.3f}",
                                    help="On the model's fixed scale: its image threshold is 0.5.")
                verdict_column.metric("Verdict", result.verdict,
                                      help="DEFECT when the score is above the model's threshold (0.5).")
                facts.caption(f"Threshold 0.5 · raw score {result.raw_score:.4g} · model {entry.name}")
                if result.regions:
                    facts.dataframe(result.region_rows(), hide_index=True, width="stretch")
                else:
                    facts.caption("No region above the pixel threshold.")
    if results:
        page.colorbar()
    if len(results) > 1:
        st.subheader("Summary")
        st.dataframe([{"image": result.name, "score": round(result.score, 3), "verdict": result.verdict,
                       "regions": len(result.regions)} for result in results], hide_index=True)
elif not images:
    st.caption("Upload one or more images above, or pick one from the dataset.")
