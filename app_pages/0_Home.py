"""Home: upload images (or pick one from the dataset) and a model → heatmap, anomaly score, verdict, defect regions.

The first entry of ``streamlit run app.py``. Works with no configuration: the built-in demo dataset is generated
on first start and the default model (PatchCore, EfficientNet-Lite0) is trained in one click — or on first use.
"""

from __future__ import annotations

import streamlit as st

from inspection.results.image import VERDICT_HELP, image_result, unfamiliar_notes
from inspection.results.numbers import round_score, score_text
from inspection_app import caches, page, sidebar, teach_view, training
from inspection_app.browse import sample_label
from inspection_app.jobs import MANAGER
from inspection_app.uploads import UPLOAD_TYPES, content_digest, decode_upload, max_upload_mb, upload_label

page.page_setup("Visual inspection", "Upload images of a part and pick a trained model: the heatmap shows where "
                "the model sees anomalies, the score and verdict say whether the image is a defect at the model's "
                "threshold, and boxes outline the defect regions.")
dataset = sidebar.data_source_picker()
st.sidebar.header("Model")
entries = sidebar.model_entries()
entry = sidebar.model_picker(entries, dataset=dataset)
running = training.training_running()
if entry is not None:
    teach_view.panel(entry)

if not entries:
    target = "the built-in demo data" if dataset is None or training.is_demo(dataset) else f"{dataset.category!r}"
    st.info(f"No trained model yet. A first model — PatchCore on EfficientNet-Lite0 features — trains on {target} "
            "in about a minute on a CPU. Other methods and settings: **Train** page.", icon=":material/info:")
    if st.button(f"Train a first model on {target}", type="primary", key="train_default", disabled=running,
                 icon=":material/rocket_launch:"):
        training.start_training(training.default_training_request(dataset))
training.training_monitor(entry, tied=True)  # a finished training's summary only while its model is chosen

origin = page.kept_radio(st, "Images", ["upload", "dataset"], "home_origin", horizontal=True,
                         format_func={"upload": "Upload", "dataset": "Pick from the dataset"}.get)
images: list[tuple[str, str, object, teach_view.Teachable]] = []  # (label, cache key, RGB array, what to teach)
if origin == "upload":
    uploads = st.file_uploader(f"Images to inspect ({', '.join(UPLOAD_TYPES)}; up to {max_upload_mb()} MB each)",
                               type=list(UPLOAD_TYPES), max_upload_size=max_upload_mb(), accept_multiple_files=True,
                               key="home_upload")
    for number, upload in enumerate(uploads or [], start=1):
        data = upload.getvalue()
        with page.user_errors():
            images.append((upload_label(number, upload.name), content_digest(data),
                           decode_upload(upload.name, data), teach_view.Teachable(upload.name, data=data)))
elif dataset is None:
    st.info("Choose a dataset in the sidebar to pick images from it.")
elif not dataset.test:
    st.info(f"The dataset {dataset.category!r} has no test images to pick from.")
else:
    by_label = {sample_label(sample): sample for sample in dataset.test}
    chosen = page.kept_selectbox(st, "Test image", list(by_label), "home_sample")
    sample = by_label[chosen]
    with page.user_errors():
        images.append((chosen, caches.file_key(sample.path), caches.load_path_image(sample.path),
                       teach_view.Teachable(sample.path.name, path=sample.path)))

if images and not entries:
    own_job = st.session_state.get("job_id")
    state = MANAGER.state(own_job) if own_job else None
    if state is not None and state.active:
        st.info("Training a first model; the results appear here when it is done.")
    elif running:
        st.info("A training started elsewhere is running; the results appear here when it is done.")
    elif origin == "upload" and (dataset is None or training.is_demo(dataset)):
        # Never a demo model on someone's parts without a word: ask.
        st.warning("There is no model yet, and the open dataset is the built-in demo (brushed metal): a model "
                   "trained on it knows nothing of your parts. Open your own dataset in the sidebar (**Local "
                   "folder**) to train on it — or train on the demo data anyway.", icon=":material/help:")
        if st.button("Train on the demo data", key="train_demo_anyway"):
            if training.start_training(training.default_training_request(dataset)):
                st.rerun()
    elif training.start_training(training.default_training_request(dataset)):  # first use: the open dataset
        st.rerun()
    st.stop()

if images and entry is not None:
    results = []
    model = None
    with page.user_errors():
        model = caches.model_of(entry)
    version = teach_view.model_version(model) if model is not None else ""
    decisions = teach_view.decisions_for(entry)
    for index, (name, key, image, teachable) in enumerate(images):
        with st.container(border=True, key=f"result-{index}"):
            with page.user_errors():
                prediction = caches.predict_image(entry, image, key)
                result = image_result(prediction, 0, image, name)
                results.append(result)
                picture, facts = st.columns([3, 2])
                picture.image(result.overlay(), caption=f"{name}: heatmap and defect regions" + (
                    " (not to be trusted: unlike the training data)" if result.unlike_training else ""),
                    width="stretch")
                facts.subheader(name)
                score_column, verdict_column = facts.columns(2)
                score_column.metric("Anomaly score", score_text(result.score),
                                    help="On the model's scale, where its saved image threshold is 0.5.")
                verdict_column.metric("Verdict", result.verdict, help=VERDICT_HELP)
                facts.caption(f"Threshold 0.5 (saved) · raw score {result.raw_score:.4g} · model {entry.name}"
                              + (f", {version}" if version else ""))
                teach_view.teach_buttons(entry, teachable, f"home-{index}-{key}", decisions, container=facts)
                for note in unfamiliar_notes(result, prediction.calibration, model.info if model else {},
                                             dataset.category if dataset is not None else None):
                    facts.warning(note, icon=":material/help:")
                if result.regions:
                    facts.dataframe(result.region_rows(brief=True), hide_index=True, width="stretch")
                elif result.unlike_training:
                    facts.caption("No verdict and no regions: the model cannot judge a picture unlike its data.")
                elif result.is_defect:
                    facts.caption("No region above the pixel threshold (the defect is spread thinly).")
                else:
                    facts.caption("Good part: no defect regions are drawn.")
    if results:
        page.colorbar(results[0].colour_max, uninspected=not all(result.fully_inspected for result in results))
    if len(results) > 1:
        st.subheader("Summary")
        st.dataframe([{"image": result.name, "score": round_score(result.score), "verdict": result.verdict,
                       "regions": len(result.regions)} for result in results], hide_index=True)
elif not images:
    st.caption("Upload one or more images above, or pick one from the dataset.")
