"""One module per method. The registry imports every module in this folder and lists each `AnomalyModel`
subclass under the `name` literal of its class body: adding a method is adding a file here. Imports `model/` and
below; never `registry`, `results/`, `explain/` or `workflows/`."""
