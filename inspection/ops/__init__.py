"""Tensor building blocks shared by methods: chunked nearest neighbours, coreset selection, smoothing."""
