"""Measurement: the bench (accuracy and speed per method and category), speed under a shared CPU, the backbone ×
side sweep, and what each resize mode costs. Imports `workflows/` and below; only `cli` and the app import it."""
