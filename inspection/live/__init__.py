"""Live pipelines: one source (a video file, a USB camera, an RTSP or MJPEG stream, a watched folder) → one model →
sinks (a folder, a CSV, a webhook, MQTT) — `inspection run`, and the app's Live page. `frames` holds what flows
(a frame, the source and sink contracts, back-off), `sources` and `sinks` the kinds, `pipeline` the loop with its
back-pressure and counts, `spec` the pipeline file and flags, `loopback` the local servers the bench and tests
start. Each frame's message is `results.record`'s JSON record, the one the HTTP service answers. Imports `export`
(to open the model), `results/`, `model/`, `data/` and below; never `workflows/`, `cli` or the app."""
