"""Export for the line, on the Train page: the chosen model exported beside its file (`inspection.export.bundle`),
checked against it, and offered as one zip to download for the line PC."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from inspection.export.bundle import current_export, export_beside, export_path, zip_export
from inspection.runtime.exported import MANIFEST, read_manifest
from inspection_app import page
from inspection_app.library import ModelEntry

#: Where the page keeps the last export's one-line summary, for the rerun after the button.
EXPORTED_KEY = "export_outcome"


def export_control(entry: ModelEntry) -> None:
    """The button that exports `entry`, and the download of its export while that is of the file as it is now."""
    st.markdown("**Export for the line**")
    st.caption("Writes the model as a folder that the torch-free runtime, `inspection serve` and the Live page score "
               "(ONNX, and OpenVINO IR where OpenVINO is installed), checked against the model on example images "
               "and kept beside it in `exports/`. Unzip it on the line PC and serve it as docs/deploy.md says.")
    folder = export_path(entry.path)
    archive = folder.with_suffix(".zip")
    if st.button("Export for the line", key="manage_export", icon=":material/output:",
                 help="Tracing the network and checking it takes from seconds to a minute."):
        with st.spinner(f"Exporting {entry.name}: tracing the network and checking it against the model…"), \
                page.user_errors():
            summary = export_beside(entry.path)
            zip_export(summary.folder)
            sizes = ", ".join(f"{width} × {height}" for height, width in (graph.working for graph in summary.graphs))
            line = (f"Exported {entry.name} to `{summary.folder}` ({' and '.join(summary.formats)}; working size "
                    f"{sizes}); largest difference from the model on example images: "
                    f"{summary.max_map_difference:.2g} in the map, {summary.max_score_difference:.2g} in the score.")
            st.session_state[EXPORTED_KEY] = {"model": str(entry.path), "line": line}
    if not (archive.is_file() and (folder / MANIFEST).is_file()):
        return
    if current_export(entry.path) is None:
        st.info(f"The export in `{folder}` is of an earlier version of this model (taught, refitted or re-thresholded "
                "since): export it again.", icon=":material/history:")
        return
    outcome = st.session_state.get(EXPORTED_KEY)
    if outcome and outcome["model"] == str(entry.path):
        st.success(outcome["line"], icon=":material/check_circle:")
    else:
        with page.user_errors():
            formats = read_manifest(folder).get("formats", [])
            st.caption(f"Exported {datetime.fromtimestamp(archive.stat().st_mtime):%Y-%m-%d %H:%M} to `{folder}` "
                       f"({' and '.join(formats)}).")
    st.download_button("Download the export (zip)", archive.read_bytes(), file_name=archive.name,
                       mime="application/zip", key="manage_export_download", icon=":material/download:")
