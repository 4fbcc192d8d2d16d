"""Export: a fitted model written as a deployable folder — the network from the normalised image to the anomaly map,
the image score and the familiarity vector as one ONNX graph (OpenVINO IR converted from it), beside the model's
header as JSON — for `inspection.runtime` to score without torch; and `load_scorer`, which opens either kind.
Imports `runtime`, `registry`, `model/` and below; never `workflows/`, the service, `cli` or the app."""
