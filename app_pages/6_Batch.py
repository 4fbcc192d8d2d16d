"""Batch: score a whole folder of images with a model — progress while it runs, then a sortable table, the score
histogram with the threshold, the worst images' heatmaps, and the CSV and HTML report to download. Scoring the
same folder again only scores images that are new or changed."""

from __future__ import annotations

import streamlit as st

from inspection.export.bundle import current_export
from inspection.runtime.exported import MANIFEST
from inspection.workflows.batch import CSV_NAME
from inspection.workflows.report import MAX_PICTURES, REPORT_NAME
from inspection_app import batch_view, caches, page, sidebar, teach_view

page.page_setup("Batch", "Score a whole folder of images with a model: every image's score and verdict at the "
                "model's threshold, the worst ones as heatmaps, and a CSV and a one-file HTML report to download. "
                "Scoring the same folder again goes on where it stopped: images already scored are skipped.")
dataset = sidebar.data_source_picker()
entry = sidebar.require_model(dataset)
teach_view.panel(entry)

folder_column, worst_column = st.columns([3, 1])
folder_text = page.kept_text_input(folder_column, "Folder of images", "batch_folder",
                                   placeholder="/data/line3/2026-11-24",
                                   help="Every image file directly in this folder (png, jpg, bmp, tif) is scored; "
                                        "sub-folders are not.")
worst = worst_column.number_input("Worst images shown", min_value=1, max_value=MAX_PICTURES, value=12, step=1,
                                  key="batch_worst", help="The highest scores are shown as heatmaps here; the "
                                                          "report pictures every image judged a defect as well.")
exported = current_export(entry.path)
use_export = exported is not None and st.toggle(
    "Score with the export (torch-free runtime)", value=False, key="batch_export",
    help="The model exported for the line on the Train page, as the line PC will score it (OpenVINO where it is "
         "installed, onnxruntime otherwise): faster on a CPU than the model file, and scores within 1e-3 of it.")
if st.button("Score the folder", type="primary", key="batch_start", icon=":material/play_arrow:",
             disabled=not folder_text.strip()):
    bar = st.progress(0.0, text="Listing the folder…")
    with page.user_errors():
        scorer = caches.cached_export(str(exported), (exported / MANIFEST).stat().st_mtime) if use_export else None
        run = batch_view.run_batch(caches.model_of(entry), entry, folder_text, int(worst),
                                   batch_view.progress_reporter(lambda fraction, text: bar.progress(fraction, text)),
                                   scorer=scorer)
        st.session_state["batch_result"] = run
    bar.empty()

run = st.session_state.get("batch_result")
if run is None or not run.is_for(entry, folder_text):
    st.caption("Type a folder and press **Score the folder**. The model is the one chosen in the sidebar.")
    st.stop()
if not run.is_of(entry, folder_text):  # the model file changed since (taught, say): these are the old scores
    st.info(f"These scores are those of {run.version or 'an earlier version'} of the model; it has changed since "
            f"(now {teach_view.version_of(entry) or 'another version'}). Press **Score the folder** to score the "
            "folder with the model as it is now.", icon=":material/history:")

summary = run.summary
counts = st.columns(5)
counts[0].metric("Files", len(summary.rows))
counts[1].metric("Judged defects", summary.flagged, help="Score above 0.5, the model's saved threshold.")
counts[2].metric("Judged good", summary.scored - summary.flagged)
counts[3].metric("Unreadable", summary.failed)
counts[4].metric("From an earlier run", summary.skipped, help="Scored before with this model and unchanged since: "
                                                             "not scored again.")
st.caption(f"Model **{entry.name}**, {run.version} · results in `{summary.out}` (scoring this folder again skips "
           "what is there, while the model stays the same).")
with page.user_errors():
    downloads = st.columns(2)
    downloads[0].download_button("Download the CSV", summary.csv_path.read_bytes(), file_name=CSV_NAME,
                                 mime="text/csv", key="batch_csv", icon=":material/download:")
    downloads[1].download_button("Download the HTML report", run.report_path.read_bytes(), file_name=REPORT_NAME,
                                 mime="text/html", key="batch_report", icon=":material/download:",
                                 help="One self-contained file: counts, histogram, the flagged and worst images' "
                                      "heatmaps and every image's row. Opens offline in any browser.")

st.subheader("Every image")
st.caption("Highest score first; click a column to sort by it. Select rows (their left edge) to teach the model "
           "about them below.")
decisions = teach_view.decisions_for(entry)
frame = batch_view.table(summary, teach_view.taught_words(decisions, {
    name: run.file(name) for name in batch_view.readable_files(summary)}))


def selection_to_teach() -> None:
    """Rows selected in the table become the images to teach."""
    rows = st.session_state["batch_table"]["selection"]["rows"]
    st.session_state["batch_teach_files"] = batch_view.selected_files(frame, rows)


st.dataframe(frame, hide_index=True, width="stretch", placeholder=batch_view.EMPTY_CELL, key="batch_table",
             on_select=selection_to_teach, selection_mode="multi-row")
options = batch_view.teachable_files(frame)
st.session_state["batch_teach_files"] = batch_view.still_offered(st.session_state.get("batch_teach_files"), options)
chosen_files = st.multiselect("Images to teach", options, key="batch_teach_files",
                              help="Selected in the table above, or picked here.")
teach_view.teach_selected(entry, [teach_view.Teachable(name, path=run.file(name)) for name in chosen_files],
                          "batch")
st.plotly_chart(batch_view.histogram(summary), key="batch_histogram")

st.subheader(f"The {len(run.pictures)} highest scores")
per_row = 4
for start in range(0, len(run.pictures), per_row):
    for column, picture in zip(st.columns(per_row), run.pictures[start:start + per_row]):
        if picture.image is None:
            column.caption(f"{batch_view.picture_caption(picture)} (no picture: the file is gone or changed)")
        else:
            column.image(picture.image, caption=batch_view.picture_caption(picture), width="stretch")
if run.pictures:
    with page.user_errors():
        batch_model = caches.model_of(entry)
        page.colorbar(batch_model.calibration.colour_max, uninspected=not batch_model.preprocessing.sees_whole_image)
