"""The method contract and its machinery: `AnomalyModel`, calibration, predictions, batching, the typed file
header and the model file."""
