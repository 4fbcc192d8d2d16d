"""Compare: several models on several images — one row per image, one column per model, heatmaps on one colour
scale — and each model's metrics and speed on the same test split."""

from __future__ import annotations

from typing import Any

import streamlit as st

from inspection.data.datasets import open_dataset
from inspection.results.image import image_result
from inspection.results.numbers import score_text
from inspection.workflows.evaluate import evaluate
from inspection_app import caches, page, sidebar, teach_view
from inspection_app.browse import default_compare_samples, sample_label
from inspection_app.compare_view import column_header, common_colour_max, default_compare_models, measure_progress
from inspection_app.tables import EMPTY_CELL, MODEL_COLUMNS, evaluation_row, metric_rows
from inspection_app.uploads import UPLOAD_TYPES, content_digest, decode_upload, max_upload_mb, upload_label

page.page_setup("Compare", "Several models side by side on the same images. Every heatmap is drawn on one colour "
                "scale whose middle colour is each model's saved threshold (0.5), so colours mean the same thing in "
                "every column.")
dataset = sidebar.data_source_picker()
entries = sidebar.model_entries()
if not entries:
    st.info("No trained model yet: train some on the **Train** page.")
    st.stop()

by_path = {str(entry.path): entry for entry in entries}
chosen_paths = st.multiselect("Models", list(by_path), default=default_compare_models(entries, dataset),
                              key="compare_models", format_func=lambda path: by_path[path].label,
                              help="By default, the newest models made on the open dataset.")
chosen = [by_path[path] for path in chosen_paths]

images: list[tuple[str, str, Any]] = []
if dataset is not None and dataset.test:
    by_label = {sample_label(sample): sample for sample in dataset.test}
    defaults = [sample_label(sample) for sample in default_compare_samples(dataset)][:4]
    picked = st.multiselect("Test images", list(by_label), default=defaults, key="compare_samples")
    for label in picked:
        sample = by_label[label]
        with page.user_errors():
            images.append((label, caches.file_key(sample.path), caches.load_path_image(sample.path)))
uploads = st.file_uploader("…and/or upload images", type=list(UPLOAD_TYPES), max_upload_size=max_upload_mb(),
                           accept_multiple_files=True, key="compare_upload")
for number, upload in enumerate(uploads or [], start=1):
    data = upload.getvalue()
    with page.user_errors():
        images.append((upload_label(number, upload.name), content_digest(data), decode_upload(upload.name, data)))

if not chosen or not images:
    st.info("Pick at least one model and one image.")
    st.stop()

loaded = {}
for entry in chosen:
    with page.user_errors():
        loaded[str(entry.path)] = caches.model_of(entry)
colour_max = common_colour_max(loaded.values())

st.subheader("Heatmaps")
n_columns = max(len(chosen) + 1, 4)  # at least 4, so that one model does not give giant images
header = st.columns(n_columns)
header[0].markdown("**Image**")
for column, entry in zip(header[1:], chosen):
    model = loaded.get(str(entry.path))
    column.markdown(column_header(entry, teach_view.model_version(model) if model is not None else ""))
all_inspected = True
for name, key, image in images:
    row = st.columns(n_columns)
    row[0].image(image, caption=name, width="stretch")
    for column, entry in zip(row[1:], chosen):
        with column:
            with page.user_errors():
                result = image_result(caches.predict_image(entry, image, key), 0, image, name, colour_max=colour_max)
                caption = f"score {score_text(result.score)} · {result.verdict}"
                st.image(result.overlay(), caption=caption, width="stretch")
                all_inspected = all_inspected and result.fully_inspected
page.colorbar(colour_max, uninspected=not all_inspected)

st.subheader("Metrics and speed")
measured = st.session_state.get("compare_measured")
measured_here = measured is not None and dataset is not None and measured[0] == str(dataset.root) and \
    {row["name"] for row in measured[1]} >= {entry.name for entry in chosen}
st.dataframe(metric_rows(chosen), hide_index=True, width="stretch", column_config=MODEL_COLUMNS,
             placeholder=EMPTY_CELL)
splits = {entry.data_path for entry in chosen}
if measured_here:
    st.caption("Above: as measured at training time. Below: all measured now on the same split.")
elif len(splits) > 1 or any(not entry.metrics for entry in chosen):
    st.warning("These models were not all evaluated on the same test split at training time: measure them on "
               "the same split below before comparing their numbers.")
else:
    st.caption("As measured at training time on each model's test split.")


@st.cache_data(show_spinner=False, max_entries=32)
def measure(path: str, modified: float, root: str, _progress: Any = None) -> dict[str, Any]:
    """Metrics and speed of a model on a dataset's test split, measured now (cached per model file version;
    `_progress`, left out of the cache key, hears each step)."""
    return evaluate(caches.cached_model(path, modified), open_dataset(root), timing_repeats=10,
                    progress=_progress).metrics


if dataset is not None and dataset.test:
    if st.button(f"Measure all on the test split of {dataset.category!r} now", key="compare_measure"):
        rows = []
        with st.status(f"Measuring {len(chosen)} model(s) on {len(dataset.test)} test images…",
                       expanded=True) as status:
            progress = st.progress(0.0)
            for index, entry in enumerate(chosen):
                text = f"Evaluating {entry.name} ({index + 1} of {len(chosen)})"
                progress.progress(index / len(chosen), text=text)
                with page.user_errors():
                    rows.append(evaluation_row(entry.name, measure(
                        str(entry.path), entry.modified, str(dataset.root),
                        measure_progress(progress, index, len(chosen), text))))
            progress.progress(1.0, text="Done")
            status.update(label="Measured", state="complete", expanded=False)
        st.session_state["compare_measured"] = (str(dataset.root), rows)
        st.rerun()
    if measured_here:
        st.dataframe(measured[1], hide_index=True, width="stretch", placeholder=EMPTY_CELL)
        st.caption(f"All measured now on the same {len(dataset.test)} test images of {dataset.category!r}, "
                   "on this machine.")
