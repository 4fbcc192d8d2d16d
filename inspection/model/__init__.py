"""The method contract and its machinery: `AnomalyModel`, its capabilities and resize modes, calibration and
what a threshold does, predictions, batching, the typed file header and the model file. Imports the ground and
`data/`, `features/`, `ops/`, `scores/`; never `methods/`, `registry` or anything above."""
