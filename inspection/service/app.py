"""The service's HTTP application: one loaded model behind `POST /v1/inspect`, `GET /v1/model` and `GET /v1/health`.

Every answer is JSON. A refused request is one line, `{"error": "..."}`, with the status that says whose fault it
is: 400 (a bad image or parameter), 401 (no or a wrong bearer token), 413 (too large), 415 (not an image type), 503
(busy: the queue is full). Memory is bounded: a body is read only up to the size limit, and only `workers + queue`
requests are held at once — the next one is answered 503 at once, before its body is read into memory.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from .. import __version__
from ..data.images import load_image_with_size
from ..errors import ImageLoadError, friendly_error, is_user_error
from ..model.scorer import Scorer
from ..results.image import DISPLAY_MAX_SIDE, image_result
from ..results.record import RECORD_SCHEMA, RECORD_SCHEMA_ID, InspectionRecord, inspection_record, model_record
from .limits import MB, TOKEN_ENV, Limits

#: The multipart field the image is sent in.
IMAGE_FIELD = "image"
#: Bytes of a refused body read and thrown away, so that the client reads the refusal instead of a reset connection
#: (an HTTP/1.1 client sends its whole body before it reads the answer); beyond this the connection is closed.
DRAIN_LIMIT = 64 * 1024 * 1024
_RAW_TYPES = ("application/octet-stream",)
_SEND_IMAGE = (f"send the image as multipart/form-data (file field '{IMAGE_FIELD}') or as the raw body with an image "
               "Content-Type (image/png, image/jpeg, ...) or application/octet-stream")

log = logging.getLogger("inspection.service")


class ServiceError(Exception):
    """A request refused with an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A refusal: one line of JSON."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=dict(headers or {}))


def status_of(error: BaseException) -> tuple[int, str]:
    """The status and the line for an error raised while a request was served (a bug of ours is a 500 whose line
    names only the error's type: its traceback goes to the service's log, never to the client)."""
    if isinstance(error, ServiceError):
        return error.status, error.message
    if is_user_error(error):
        text = friendly_error(error)
        if text.startswith("Not enough memory"):
            return 503, text
        return 400, text
    return 500, f"internal error ({type(error).__name__}): the service's log has the details"


class _Gate:
    """Admission: at most `capacity` requests held at once; the event loop is the only caller (no lock needed)."""

    def __init__(self, workers: int, queue: int):
        self.workers = workers
        self.capacity = workers + queue
        self.held = 0

    def enter(self) -> bool:
        if self.held >= self.capacity:
            return False
        self.held += 1
        return True

    def leave(self) -> None:
        self.held -= 1

    @property
    def waiting(self) -> int:
        return max(0, self.held - self.workers)


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _is_image_type(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in _RAW_TYPES


async def _drain(request: Request) -> None:
    """Read what is left of a refused body and throw it away (at most DRAIN_LIMIT bytes)."""
    drained = 0
    try:
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > DRAIN_LIMIT:
                return
    except Exception:  # noqa: BLE001 - the client went away or the stream was read already: nothing left to drain
        return


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused (413) as soon as it exceeds `max_bytes`: never more than that in memory."""
    too_large = ServiceError(413, f"the request is larger than this service's limit of {max_bytes / MB:.4g} MB "
                                  "(the --max-mb option of `inspection serve`)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        await _drain(request)
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > max_bytes:
            del body
            await _drain(request)
            raise too_large
        body += chunk
    return bytes(body)


async def _image_bytes(request: Request, body: bytes, media_type: str) -> tuple[bytes, str | None]:
    """(the image's bytes, the file name it was sent under) from a raw body or a multipart form."""
    if media_type != "multipart/form-data":
        if not body:
            raise ServiceError(400, f"empty request body: {_SEND_IMAGE}")
        return body, None

    async def chunks() -> AsyncIterator[bytes]:
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=4, max_fields=16).parse()
    except MultiPartException as error:
        raise ServiceError(400, f"the multipart form cannot be read ({error.message}): {_SEND_IMAGE}") from None
    try:
        part = form.get(IMAGE_FIELD)
        if not isinstance(part, UploadFile):
            sent = ", ".join(sorted(set(form.keys()))) or "none"
            raise ServiceError(400, f"the form has no file field '{IMAGE_FIELD}' (fields sent: {sent}): e.g. curl -F "
                                    f"{IMAGE_FIELD}=@part.png")
        part_type = (part.content_type or "").split(";")[0].strip().lower()
        if part_type and not _is_image_type(part_type):
            raise ServiceError(415, f"the file '{part.filename}' was sent as {part_type}, not an image: {_SEND_IMAGE}")
        data = await part.read()
        if not data:
            raise ServiceError(400, f"the file '{part.filename or IMAGE_FIELD}' is empty")
        return data, part.filename or None
    finally:
        await form.close()


class _Service:
    """The loaded model and what guards it: the admission gate, the worker threads, one scoring at a time."""

    def __init__(self, scorer: Scorer, model_id: str, token: str | None, limits: Limits):
        if scorer.calibration is None:
            raise ValueError("the model has no calibration (thresholds): retrain it")
        self.scorer = scorer
        self.model_id = model_id
        self.token = token or None
        self.limits = limits
        self.gate = _Gate(limits.workers, limits.queue)
        self.limiter: anyio.CapacityLimiter | None = None  # made on the event loop, at the first request
        # The model is not known to be safe to call from two threads at once (a torch module's buffers, an
        # inference session's state); its forward pass already uses every core.
        self.model_lock = threading.Lock()
        self.started = time.time()
        self.scored = 0

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ServiceError(401, f"this service needs a bearer token: send the header 'Authorization: Bearer "
                                    f"TOKEN' (the {TOKEN_ENV} the service was started with)",
                               {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ServiceError(401, "wrong bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def score(self, data: bytes, file: str | None, heatmap: bool) -> InspectionRecord:
        """Decode and score one image (in a worker thread): its record, timings but the total filled in."""
        label = file or "request body"
        started = time.perf_counter()
        image, size = load_image_with_size(data, name=label, max_side=DISPLAY_MAX_SIDE)
        # Judged on the file's own size, as `predict` judges it, so that the message names what the client sent.
        self.scorer.preprocessing.check_inspectable(*size, name=label)
        decoded = time.perf_counter()
        with self.model_lock:
            scoring = time.perf_counter()
            prediction = self.scorer.predict([image])
            self.scored += 1
        result = image_result(prediction, 0, image, file or "image", original_size=size)
        scored = time.perf_counter()
        timings = {"decode": (decoded - started) * 1000, "score": (scored - scoring) * 1000, "total": 0.0}
        return inspection_record(result, self.scorer, timings, self.model_id, file=file, heatmap=heatmap)

    def description(self) -> dict[str, Any]:
        """What `GET /v1/model` answers."""
        scorer, calibration = self.scorer, self.scorer.calibration
        assert calibration is not None  # checked in __init__
        familiarity = getattr(scorer, "familiarity", None)
        info = scorer.info
        return {
            **model_record(scorer, self.model_id),
            "display_name": info.display_name, "category": info.category,
            "thresholds": {
                "image": {"score": calibration.normalized_image_threshold, "raw": calibration.image_threshold,
                          "rule": calibration.image_rule, "promise": calibration.image_promise,
                          "target_false_alarm_rate": calibration.image_target_fpr},
                "pixel": {"score": calibration.normalized_pixel_threshold, "raw": calibration.pixel_threshold,
                          "rule": calibration.pixel_rule}},
            "preprocessing": {**scorer.preprocessing.to_dict(), "min_side": scorer.preprocessing.min_side,
                              "decoded_max_side": DISPLAY_MAX_SIDE},
            "familiarity": None if familiarity is None else {
                "threshold": familiarity.threshold, "promised_false_alarm_rate": familiarity.promised_fpr,
                "promise": familiarity.describe()},
            "limits": {"max_bytes": self.limits.max_bytes, "workers": self.limits.workers,
                       "queue": self.limits.queue},
            "record_schema": RECORD_SCHEMA_ID,
            "inspection": __version__,
        }


_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_REFUSALS = {status: {"description": why, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
             for status, why in ((400, "A bad image (unreadable, empty, too small for the model) or parameter."),
                                 (401, "No or a wrong bearer token."), (413, "The request is over the size limit."),
                                 (415, "The body is not of an image type."), (503, "Busy: the queue is full."))}
_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD], "properties": {
        IMAGE_FIELD: {"type": "string", "format": "binary", "description": "The image file (PNG, JPEG, BMP, TIFF)."}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


#: Where the service serves Swagger UI's files from, when the `fastapi-swagger` package (which holds them) is
#: installed.
DOCS_ASSETS = "/docs-assets"


def _add_docs(app: FastAPI) -> None:
    """The OpenAPI docs at /docs, Swagger UI's files served by the service itself: a line PC is often offline, and
    FastAPI's own page loads them from a CDN, which leaves it blank there. The files are those `fastapi-swagger`
    ships (it comes with the `serve` extra; Swagger UI 5, which reads FastAPI's OpenAPI 3.1); without it the page
    falls back to the CDN's copy."""
    try:
        assets_folder = Path(str(importlib.resources.files("fastapi_swagger") / "resources"))
    except ModuleNotFoundError:
        assets_folder = None
    assets = {}
    if assets_folder is not None and (assets_folder / "swagger-ui-bundle.js").is_file():
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets_folder), name="docs-assets")
        assets = {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                  "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                  "swagger_favicon_url": f"{DOCS_ASSETS}/favicon-32x32.png"}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} — docs",
                                   **assets)


def create_app(scorer: Scorer, model_id: str | None = None, token: str | None = None,
               limits: Limits | None = None) -> FastAPI:
    """The service for one loaded model: `token` (None: no authentication), `limits` (size, workers, queue)."""
    service = _Service(scorer, model_id or scorer.info.display_name or scorer.name, token, limits or Limits())
    app = FastAPI(title="inspection", version=__version__, docs_url=None, redoc_url=None,
                  description="Visual inspection by anomaly detection: send an image, get its score, verdict and "
                              f"defect regions. Model: {service.model_id} ({scorer.name}, {scorer.runtime}).")
    app.state.service = service
    _add_docs(app)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code in (404, 405):
            message = (f"{message}: {request.method} {request.url.path} (this service answers POST /v1/inspect, "
                       "GET /v1/model and GET /v1/health; its docs are at /docs)")
        return error_response(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
                             for item in error.errors())
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("error serving %s %s", request.method, request.url.path, exc_info=error)
        return error_response(*status_of(error))

    @app.get("/v1/health", summary="Whether the service answers, and how busy it is (no token needed).")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "runtime": scorer.runtime, "scoring": service.gate.held - service.gate.waiting,
                "waiting": service.gate.waiting, "scored": service.scored,
                "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/v1/model", summary="The model: method, creation, fingerprint, thresholds, preprocessing, and what "
                                  "its familiarity check promises.", responses={401: _REFUSALS[401]})
    async def model(request: Request) -> JSONResponse:
        try:
            service.authorize(request)
        except ServiceError as error:
            return error_response(error.status, error.message, error.headers)
        return JSONResponse(service.description())

    @app.post("/v1/inspect", summary="Score one image: score, verdict, threshold, defect regions, model, timing.",
              responses={200: {"description": "The image's record.",
                               "content": {"application/json": {"schema": RECORD_SCHEMA}}}, **_REFUSALS},
              openapi_extra=_IMAGE_BODY)
    async def inspect(request: Request, heatmap: str | None = None) -> JSONResponse:
        """`?heatmap=png` adds the heatmap overlay (base64 PNG) as `heatmap_png`."""
        arrived = time.perf_counter()
        admitted = False
        try:
            service.authorize(request)
            if heatmap not in (None, "", "png", "none"):
                raise ServiceError(400, f"heatmap={heatmap!r}: the only heatmap format is png (?heatmap=png)")
            media_type = _media_type(request.headers)
            if media_type and media_type != "multipart/form-data" and not _is_image_type(media_type):
                raise ServiceError(415, f"Content-Type {media_type} is not an image: {_SEND_IMAGE}")
            admitted = service.gate.enter()
            if not admitted:
                raise ServiceError(503, f"busy: {service.limits.workers} image(s) being scored and "
                                        f"{service.limits.queue} waiting; try again shortly", {"Retry-After": "1"})
            body = await _bounded_body(request, service.limits.max_bytes)
            data, file = await _image_bytes(request, body, media_type)
            del body
            if service.limiter is None:
                service.limiter = anyio.CapacityLimiter(service.limits.workers)
            record = await anyio.to_thread.run_sync(partial(service.score, data, file, heatmap == "png"),
                                                    limiter=service.limiter)
        except Exception as error:  # noqa: BLE001 - every refusal and failure is one line of JSON
            if not isinstance(error, (ServiceError, ImageLoadError)) and not is_user_error(error):
                log.error("error scoring an image", exc_info=error)
            if not isinstance(error, ServiceError) or error.status not in (413,):
                await _drain(request)
            return error_response(*status_of(error), getattr(error, "headers", None))
        finally:
            if admitted:
                service.gate.leave()
        record["timing_ms"]["total"] = round((time.perf_counter() - arrived) * 1000, 3)
        return JSONResponse(record)

    return app
