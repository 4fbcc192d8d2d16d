"""Teaching a saved model from the floor, without a refit: an inspector's decisions — "this part is good", "this is a
defect of type T" — learned where the method allows it exactly (PatchCore's bank grows by an incremental greedy
step; PaDiM's Gaussians take the image into their running sums), kept for a refit where it does not, each one
recorded in the model file with who, when and the score before and after, and each one undone exactly.
`decisions` holds the record, `teaching` the operations. Imports `registry`, `model/`, `data/`, `scores/` and
below; never `workflows/`, `cli` or the app."""
