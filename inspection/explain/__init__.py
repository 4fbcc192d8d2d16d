"""Why a score is what it is: Grad-CAM of a model's score and a good/defect classifier head with its class
activation map. Imports `results/`, `model/` and below; never `methods/`, `workflows/` or the app."""
