"""The torch-free runtime: an exported folder (`inspection.export`) scored with onnxruntime or OpenVINO — the same
preprocessing, thresholds, verdicts, regions, overlays and `predictions.csv` as the torch path. Needs numpy, Pillow,
OpenCV, SciPy and onnxruntime (or openvino), never torch: `python -m inspection.runtime EXPORTED_DIR IMAGES… --out
DIR`. Imports `workflows.batch`, `results/`, `model/` and below, and only their torch-free modules (a test runs it
with torch made unimportable)."""

from .exported import ENGINES, ExportedModel, is_export, load_export

__all__ = ["ENGINES", "ExportedModel", "is_export", "load_export"]
