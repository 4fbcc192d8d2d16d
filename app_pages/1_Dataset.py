"""Dataset: categories, counts per split and defect type, a paged thumbnail grid filtered by split and type,
an enlarged view with the ground-truth mask overlay and the image's size and mode. Only the shown page of
thumbnails is ever read, so folders of thousands of images stay fast."""

from __future__ import annotations

import streamlit as st

from inspection.data.datasets import LAYOUT_MVTEC, list_categories, load_sample_mask
from inspection.errors import DatasetError
from inspection.results.image import mask_picture
from inspection_app import caches, page, sidebar
from inspection_app.browse import (
    SPLITS,
    count_rows,
    filter_samples,
    grid_caption,
    page_count,
    page_items,
    sample_details,
)

page.page_setup("Dataset", "The images a model learns from (train: good only) and is tested on (test: good and "
                "defect types, with ground-truth masks where the dataset has them).")
dataset = sidebar.data_source_picker()
if dataset is None:
    st.info("Choose a dataset in the sidebar: the built-in demo, a local folder, or a downloaded MVTec AD category.")
    st.stop()

overview, counts_column = st.columns([1, 2])
with overview:
    st.markdown(f"**Category:** {dataset.category}  \n**Layout:** {dataset.layout}  \n**Folder:** `{dataset.root}`")
    if dataset.layout == LAYOUT_MVTEC:
        try:
            siblings = list_categories(dataset.root.parent)
        except DatasetError:
            siblings = []
        if len(siblings) > 1:
            st.markdown("**Categories in this folder:** " + ", ".join(siblings))
    st.markdown(f"**Defect types:** {', '.join(dataset.defect_types()) or 'none'}  \n"
                f"**Ground-truth masks:** {'yes' if dataset.has_masks() else 'no'}")
with counts_column:
    st.dataframe(count_rows(dataset), hide_index=True, width="stretch")

st.subheader("Images")
filters = st.columns([1, 1, 1, 1])
split = page.kept_selectbox(filters[0], "Split", SPLITS, "dataset_split")
types = ["all"] + sorted({sample.defect_type for sample in filter_samples(dataset, split)})
defect_type = page.kept_selectbox(filters[1], "Type", types, "dataset_type")
per_page = page.kept_selectbox(filters[2], "Per page", [12, 24, 48, 96], "dataset_per_page", default=24)
samples = filter_samples(dataset, split, defect_type)
pages = page_count(len(samples), per_page)
page_number = filters[3].number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1,
                                      key=f"dataset_page-{split}-{defect_type}-{per_page}")
st.caption(f"{len(samples)} images; page {page_number} of {pages}. Click **Enlarge** under a thumbnail to enlarge it.")

selected = st.session_state.get("dataset_selected")
by_path = {str(sample.path): sample for sample in samples}
if selected in by_path:
    sample = by_path[selected]
    with st.container(border=True, key="enlarged"):
        picture, details = st.columns([2, 1])
        with details:
            st.markdown(f"**{sample.path.name}**")
            show_mask = st.toggle("Ground-truth mask overlay", value=True, key="dataset_show_mask",
                                  disabled=sample.mask_path is None)
            with page.user_errors():
                st.dataframe([{"property": key, "value": str(value)}
                              for key, value in sample_details(sample, dataset.root).items()],
                             hide_index=True, width="stretch")
            if st.button("Close", key="dataset_close"):
                st.session_state.pop("dataset_selected", None)
                st.rerun()
        with picture, page.user_errors():
            image = caches.load_path_image(sample.path)
            if show_mask and sample.mask_path is not None:
                image = mask_picture(image, load_sample_mask(sample))
            st.image(image, caption=f"{sample.split}/{sample.defect_type}/{sample.path.name}", width="stretch")

columns_per_row = 6
shown = page_items(samples, page_number, per_page)
for start in range(0, len(shown), columns_per_row):
    columns = st.columns(columns_per_row)
    for column, sample in zip(columns, shown[start: start + columns_per_row]):
        with column, page.user_errors():
            st.image(caches.cached_thumbnail(str(sample.path), sample.path.stat().st_mtime),
                     caption=grid_caption(sample), width="stretch")
            if st.button("Enlarge", key=f"enlarge-{sample.path}", icon=":material/zoom_in:",
                         help=f"Enlarge {sample.path.name}"):
                st.session_state["dataset_selected"] = str(sample.path)
                st.rerun()
