"""The app's entry point: ``streamlit run app.py`` opens Home; the navigation names each page.

Pages are listed here so that the first entry reads "Home" rather than the script's file name; each page keeps
the address it had (``/Dataset``, ``/Train`` …). Their folder is not called ``pages/``: Streamlit lists a folder of
that name by itself on a browser's first load of a page's address, before this list replaces it ("app" first).
"""

from __future__ import annotations

import streamlit as st

PAGES = [
    st.Page("app_pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/1_Dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("app_pages/2_Train.py", title="Train", icon=":material/model_training:"),
    st.Page("app_pages/3_Threshold.py", title="Threshold", icon=":material/tune:"),
    st.Page("app_pages/4_Inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("app_pages/5_Compare.py", title="Compare", icon=":material/compare:"),
    st.Page("app_pages/6_Batch.py", title="Batch", icon=":material/folder_open:"),
    st.Page("app_pages/7_Live.py", title="Live", icon=":material/videocam:"),
]

st.navigation(PAGES).run()
