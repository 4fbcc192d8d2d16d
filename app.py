"""The app's entry point: ``streamlit run app.py`` opens Home; the navigation names each page.

Pages are listed here (not discovered from ``pages/``) so that the first entry reads "Home" rather than the
script's file name; each page keeps the address it had (``/Dataset``, ``/Train`` …).
"""

from __future__ import annotations

import streamlit as st

PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/2_Train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/3_Threshold.py", title="Threshold", icon=":material/tune:"),
    st.Page("pages/4_Inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("pages/5_Compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/6_Batch.py", title="Batch", icon=":material/folder_open:"),
    st.Page("pages/7_Live.py", title="Live", icon=":material/videocam:"),
]

st.navigation(PAGES).run()
