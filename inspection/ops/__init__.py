"""Tensor building blocks shared by methods: chunked nearest neighbours, coreset selection, smoothing, tiles.
Imports only the ground (`errors`, `params`, `progress`, `device`, `outputs`)."""
