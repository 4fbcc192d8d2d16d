"""Images and datasets: reading any real image file, the MVTec and plain folder layouts, the built-in demo
data, an MVTec download, and the preprocessing from an image to what a model sees. Imports only the ground
(`errors`, `params`, `progress`, `device`, `outputs`)."""
