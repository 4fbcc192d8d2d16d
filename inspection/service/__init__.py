"""The HTTP service: `inspection serve` — a model (a model file, or an exported folder) loaded once and scored
behind FastAPI (`POST /v1/inspect`, `GET /v1/health`, `GET /v1/model`), with a bearer token, a request size limit
and bounded concurrency. `limits` holds the settings (no web framework), `app` the application, `server` the
socket and uvicorn. Each answer is `results.record`'s JSON record, the schema the live pipelines send on too.
Imports `export` (to open the model), `results/`, `model/` and below; never `workflows/` beyond scoring helpers,
`cli` or the app."""
