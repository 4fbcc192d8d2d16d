"""The Streamlit app's own layer: page frame and widgets, sidebar pickers, caches, background trainings, the
model library, charts, and the numbers each page shows. Pages import only this package and `inspection`."""
