"""The HTTP service, over real HTTP on a free loopback port: `python -m inspection serve` with a bottle PatchCore
answers as `predict` does on the same image, refuses bad requests with the right status in one line and keeps
answering, asks for its token, refuses to listen beyond loopback without one, and answers 503 when its queue is full.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, require_shared, run_cli


def _optional(name: str):
    """The optional extra's module (`pip install "inspection[serve]"`): skipped locally without it, failed in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed: CI must install the serve extra (pip install -e '.[serve]')")
        pytest.skip(f"{name} is not installed (pip install \"inspection[serve]\")", allow_module_level=True)


httpx = _optional("httpx")
_optional("fastapi")
uvicorn = _optional("uvicorn")

from inspection.results.record import RECORD_SCHEMA  # noqa: E402
from inspection.service.app import create_app  # noqa: E402 - after the optional extra is known to be there
from inspection.service.limits import TOKEN_ENV, Limits  # noqa: E402
from inspection.service.server import bind, is_loopback  # noqa: E402

MAX_MB = 2  # small, so that the 413 needs only a few megabytes


def _bottle(kind: str) -> Path:
    return require_shared() / "data" / "mvtec_ad" / "bottle" / "test" / kind / "000.png"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buffer, format="PNG")
    return buffer.getvalue()


def _one_line_error(response) -> str:
    """The refusal's line, checked to be one line of JSON and no traceback."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"], body
    return body["error"]


@contextmanager
def _served(app) -> Iterator[str]:
    """An app under uvicorn in a thread, on a free loopback port: its base URL."""
    listener = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="module")
def bottle_model(bottle_model_files) -> Path:
    return bottle_model_files("patchcore")


@pytest.fixture(scope="module")
def service(bottle_model: Path) -> Iterator[str]:
    """`python -m inspection serve` on a free port (no token: loopback), as a user starts it: its base URL."""
    environment = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    process = subprocess.Popen([sys.executable, "-m", "inspection", "serve", "--model", str(bottle_model), "--port",
                                "0", "--max-mb", str(MAX_MB), "--workers", "1", "--queue", "2"], cwd=REPO,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # the startup line: after the model is loaded and the port bound
        assert line.startswith("serving "), (line, process.poll() is not None and process.stderr.read())
        assert "loopback only" in line and TOKEN_ENV in line
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def client(service: str) -> Iterator:
    with httpx.Client(base_url=service, timeout=120) as session:
        yield session


def test_the_service_answers_as_predict_does_on_the_same_images(client, bottle_model: Path, tmp_path: Path):
    from inspection.export.scorers import load_scorer
    from inspection.results.image import image_result
    from inspection.workflows.batch import read_source, score_files

    defect, good = _bottle("broken_large"), _bottle("good")
    scorer = load_scorer(bottle_model)
    summary = score_files(scorer, [(defect, "defect.png"), (good, "good.png")], tmp_path / "predict", 16,
                          overlays="none")
    rows = {row["file"]: row for row in summary.rows}
    with open(defect, "rb") as handle:  # multipart, as a form upload sends it
        record = client.post("/v1/inspect", files={"image": ("000.png", handle, "image/png")},
                             params={"heatmap": "png"}).json()
    raw = client.post("/v1/inspect", content=good.read_bytes(), headers={"Content-Type": "image/png"}).json()
    for answer, row in ((record, rows["defect.png"]), (raw, rows["good.png"])):
        assert answer["verdict"] == row["verdict"]
        assert answer["score"] == pytest.approx(row["score"], abs=1e-4)
        assert answer["raw_score"] == pytest.approx(row["raw_score"], rel=1e-5)
        assert len(answer["regions"]) == row["regions"]
        assert max((region["area"] for region in answer["regions"]), default=0) == row["largest_region_area"]
        assert answer["threshold"]["score"] == pytest.approx(0.5)
        assert answer["threshold"]["raw"] == pytest.approx(scorer.calibration.image_threshold)
        assert (answer["width"], answer["height"]) == (900, 900)
        assert answer["model"] == {"id": bottle_model.name, "method": "patchcore", "created": scorer.info.created,
                                   "fingerprint": scorer.fingerprint, "runtime": "torch"}
        timing = answer["timing_ms"]
        assert 0 < timing["decode"] < timing["total"] and 0 < timing["score"] < timing["total"]
    jsonschema = pytest.importorskip("jsonschema")
    for answer in (record, raw):  # the schema the pipelines will validate against states every field, and no other
        jsonschema.validate(answer, RECORD_SCHEMA)
    assert record["verdict"] == "defect" and record["regions"] and record["file"] == "000.png"
    assert raw["verdict"] == "good" and raw["regions"] == [] and raw["file"] is None and "heatmap_png" not in raw
    # Boxes in the file's pixels, as predict's table states them; the heatmap is predict's overlay picture.
    image, size = read_source(str(defect))
    result = image_result(scorer.predict([image]), 0, image, "defect", original_size=size)
    assert [f"{x0},{y0} – {x1},{y1}" for x0, y0, x1, y1 in (region["box"] for region in record["regions"])] == \
        [row["box"] for row in result.region_rows(brief=True)]
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(record["heatmap_png"]))).convert("RGB"))
    assert overlay.shape == (900, 900, 3)
    assert np.abs(overlay.astype(int) - result.overlay().astype(int)).mean() < 1.0


def test_the_model_and_health_answers(client, bottle_model: Path):
    model = client.get("/v1/model").json()
    assert model["method"] == "patchcore" and model["id"] == bottle_model.name
    assert model["thresholds"]["image"]["score"] == pytest.approx(0.5) and model["thresholds"]["image"]["promise"]
    assert model["preprocessing"]["min_side"] >= 1 and model["familiarity"]["promise"]
    assert model["limits"] == {"max_bytes": MAX_MB * 1024 * 1024, "workers": 1, "queue": 2}
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["runtime"] == "torch"
    # The docs page works offline: Swagger UI's script and style come from the service, not from a CDN.
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in docs.text
        assert client.get(asset).status_code == 200 and len(client.get(asset).content) > 10_000
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]


def test_bad_requests_get_their_status_in_one_line_and_the_service_keeps_answering(client):
    minimum = client.get("/v1/model").json()["preprocessing"]["min_side"]
    refusals = [
        (400, dict(content=b"\x89PNG\r\n\x1a\n not really a png", headers={"Content-Type": "image/png"}), "image"),
        (400, dict(content=b"", headers={"Content-Type": "image/png"}), "empty"),
        (400, dict(files={"image": ("empty.png", b"", "image/png")}), "empty"),
        (400, dict(files={"picture": ("a.png", _png(64, 64), "image/png")}), "'image'"),
        (415, dict(content=b"hello, service", headers={"Content-Type": "text/plain"}), "text/plain"),
        (415, dict(files={"image": ("notes.txt", b"hello", "text/plain")}), "text/plain"),
        (413, dict(content=b"\0" * (MAX_MB * 1024 * 1024 + 1), headers={"Content-Type": "image/png"}),
         f"{MAX_MB} MB"),
        (400, dict(content=_png(1, 1), headers={"Content-Type": "image/png"}), f"at least {minimum} px on each side"),
        (400, dict(content=_png(64, 64), headers={"Content-Type": "image/png"}, params={"heatmap": "jpeg"}),
         "png"),
    ]
    for status, request, said in refusals:
        response = client.post("/v1/inspect", **request)
        assert response.status_code == status, (request.get("headers"), response.text)
        assert said in _one_line_error(response)
    assert _one_line_error(client.get("/v1/nowhere")).startswith("Not Found")
    assert client.get("/v1/health").status_code == 200
    after = client.post("/v1/inspect", content=_bottle("good").read_bytes(), headers={"Content-Type": "image/png"})
    assert after.status_code == 200 and after.json()["verdict"] == "good"


def test_without_a_token_it_refuses_to_listen_beyond_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    # Refused before the model is opened (there is none here): the line is about the token, not the file.
    result = run_cli("serve", "--model", str(tmp_path / "none.safetensors"), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert TOKEN_ENV in result.stderr and "loopback" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("line-pc")


def test_the_service_imports_no_torch_for_an_exported_model():
    """`python -m inspection.service` serves an exported folder on a line PC that has no torch."""
    probe = ("import sys; import inspection.service.__main__, inspection.service.app, inspection.service.server, "
             "inspection.results.record; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, timeout=120).returncode == 0


def test_with_a_token_every_request_but_health_needs_it(bottle_model: Path):
    from inspection.export.scorers import load_scorer

    app = create_app(load_scorer(bottle_model), model_id="bottle", token="s3cret")
    image = {"content": _bottle("good").read_bytes()}
    with _served(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            response = client.post("/v1/inspect", headers={"Content-Type": "image/png", **headers}, **image)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
            _one_line_error(response)
            assert client.get("/v1/model", headers=headers).status_code == 401
        assert client.get("/v1/health").status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/model", headers=good).json()["id"] == "bottle"
        response = client.post("/v1/inspect", headers={"Content-Type": "image/png", **good}, **image)
        assert response.status_code == 200 and response.json()["verdict"] == "good"


class _BlockingScorer:
    """A stand-in model whose `predict` waits for `release`: it holds the one worker as long as a test wants."""

    name, runtime, fingerprint = "stub", "torch", "0" * 16

    def __init__(self) -> None:
        from inspection.data.preprocess import Preprocessing
        from inspection.model.calibration import Calibration
        from inspection.model.header import ModelInfo

        self.preprocessing = Preprocessing(mode="full", resize=32, crop=32, multiple=8)
        maps = np.random.default_rng(0).random((21, 8, 8), dtype=np.float32)
        self.calibration = Calibration.from_good(np.linspace(1.0, 2.0, 21), maps, 0.05, 0.05)
        self.info = ModelInfo(created="2024-01-01T00:00:00+00:00")
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, images, batch_size=None):
        from inspection.model.prediction import Prediction

        self.entered.set()
        assert self.release.wait(timeout=60)
        geometries = [self.preprocessing.geometry(*image.shape[:2]) for image in images]
        return Prediction(np.zeros((len(images), 32, 32), np.float32), np.ones(len(images)), geometries,
                          self.calibration)


def test_a_full_queue_answers_503_at_once_and_the_held_requests_finish():
    scorer = _BlockingScorer()
    app = create_app(scorer, token=None, limits=Limits(workers=1, queue=1))
    image = {"content": _png(64, 64), "headers": {"Content-Type": "image/png"}}
    with _served(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        answers: dict[str, int] = {}

        def send(name: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                answers[name] = own.post("/v1/inspect", **image).status_code

        scoring = threading.Thread(target=send, args=("scoring",))
        scoring.start()
        assert scorer.entered.wait(timeout=30)  # the one worker is busy
        waiting = threading.Thread(target=send, args=("waiting",))
        waiting.start()
        deadline = time.monotonic() + 30
        while client.get("/v1/health").json()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/v1/health").json() | {"uptime_s": 0, "scored": 0} == {
            "status": "ok", "runtime": "torch", "scoring": 1, "waiting": 1, "scored": 0, "uptime_s": 0}
        started = time.perf_counter()
        refused = client.post("/v1/inspect", **image)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in _one_line_error(refused) and time.perf_counter() - started < 5
        scorer.release.set()
        scoring.join(timeout=30)
        waiting.join(timeout=30)
        assert answers == {"scoring": 200, "waiting": 200}
        after = client.post("/v1/inspect", **image)
        assert after.status_code == 200 and after.json()["verdict"] == "good"
        assert json.loads(after.text)["model"]["method"] == "stub"
