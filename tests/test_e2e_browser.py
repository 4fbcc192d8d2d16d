"""End to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download).

The test starts ``streamlit run app.py`` on a free localhost port with an empty models folder and a fresh data
folder, trains the default model on the demo dataset through the Train page (and sees the model file appear),
uploads a good and a defect image on the home page (the defect must score higher and get the DEFECT verdict),
moves the threshold slider (FPR and TPR must change), and opens every page: no exception, no error box.
Screenshots go to artifacts/screenshots/; with INSPECTION_UPDATE_SCREENSHOTS=1 also to assets/screenshots/
(one per page, for the README).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app_testing import train_small_model
from inspection.data.demo import generate_demo_dataset

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("INSPECTION_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "artifacts" / "screenshots"
README_SCREENSHOTS = REPO / "assets" / "screenshots"
TRAIN_TIMEOUT_S = 300


def _require_browser() -> None:
    """Skip locally when Chromium or Playwright is missing; under CI=true that is a failure."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium chromium-driver)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (requirements-test.txt)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"streamlit did not become healthy in {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`streamlit run app.py` on a free port, with an empty models folder and a fresh data folder."""
    _require_browser()
    work = tmp_path_factory.mktemp("e2e")
    models, data, log = work / "models", work / "data", work / "streamlit.log"
    models.mkdir()
    port = _free_port()
    env = {**os.environ, "INSPECTION_MODELS_DIR": str(models), "INSPECTION_DATA_DIR": str(data),
           "INSPECTION_OFFLINE": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
               "--browser.gatherUsageStats", "false"]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield {"url": url, "models": models, "data": data, "log": log}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(app: dict):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        yield context.new_page()
        browser.close()


# ------------------------------------------------------------------------------------------------ helpers


def wait_idle(page, settle: float = 0.8, timeout: float = 120.0) -> None:
    """Wait until the app has rendered and no script run is in progress (twice in a row, a moment apart)."""
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_selector('[data-testid="stMain"] h1')
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidget"]').count() > 0 or \
            page.locator('[data-testid="stSkeleton"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return
        time.sleep(0.1)
    raise AssertionError("the app kept running for too long")


def open_page(page, app: dict, name: str) -> None:
    page.goto(f"{app['url']}/{name}")
    wait_idle(page)


def assert_no_errors(page, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: exception shown: {exceptions.first.inner_text()}"
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"{where}: error box shown: {errors.all_inner_texts()}"


def metric(page, label: str, scope: str = "") -> str:
    """The value shown by the st.metric with this label (inside `scope`, a CSS selector, when given)."""
    block = page.locator(f'{scope} [data-testid="stMetric"]'.strip()).filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label))
    return block.locator('[data-testid="stMetricValue"]').first.inner_text().strip()


def screenshot(page, name: str) -> None:
    """A screenshot of the whole page (the main area scrolls, so the viewport is grown to fit it)."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": int(min(max(height, 900), 3200))})
    time.sleep(0.6)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 900})
    if os.environ.get("INSPECTION_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / f"{name}.png")


def choose(page, label: str, option: str) -> None:
    """Pick an option of the select box with this label."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


# --------------------------------------------------------------------------------------------------- test


def test_train_upload_threshold_and_every_page(app: dict, page, tmp_path: Path) -> None:
    started = time.monotonic()

    def step(name: str) -> None:
        print(f"[e2e {time.monotonic() - started:6.1f} s] {name}", flush=True)

    step("train")
    # 1. Train the default model on the demo dataset through the Train page.
    open_page(page, app, "Train")
    assert_no_errors(page, "Train (before training)")
    assert not list(app["models"].glob("*.safetensors"))
    page.locator('[data-testid="stBaseButton-primaryFormSubmit"]').click()
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not list(app["models"].glob("*.safetensors")):
        assert time.monotonic() < deadline, f"no model file after {TRAIN_TIMEOUT_S} s:\n{app['log'].read_text()}"
        time.sleep(1)
    model_file = list(app["models"].glob("*.safetensors"))[0]
    assert model_file.stat().st_size > 0
    # The page polls the background job: when it has ended, it says so and lists the new model.
    page.locator('[data-testid="stAlertContentSuccess"]', has_text="Trained").wait_for(timeout=60_000)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=30_000)  # the trained models table
    wait_idle(page)
    assert_no_errors(page, "Train (after training)")
    screenshot(page, "train")

    step("upload")
    # 2. Upload a good and a defect image on the home page.
    open_page(page, app, "")
    demo = app["data"] / "surface" / "test"
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    good_file = Path(shutil.copyfile(demo / "good" / "000.png", uploads / "good_part.png"))
    defect_file = Path(shutil.copyfile(demo / "hole" / "000.png", uploads / "part_with_hole.png"))
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(good_file), str(defect_file)])
    page.locator(".st-key-result-1 [data-testid='stMetricValue']").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert_no_errors(page, "home")
    good_score = float(metric(page, "Anomaly score", ".st-key-result-0"))
    defect_score = float(metric(page, "Anomaly score", ".st-key-result-1"))
    assert defect_score > good_score
    assert metric(page, "Verdict", ".st-key-result-1") == "DEFECT"
    assert metric(page, "Verdict", ".st-key-result-0") == "GOOD"
    screenshot(page, "home")

    step("threshold")
    # 3. Move the threshold slider: FPR and TPR change.
    open_page(page, app, "Threshold")
    assert_no_errors(page, "Threshold")
    before = (metric(page, "FPR (test)"), metric(page, "TPR (test)"))
    assert all(value.endswith("%") for value in before)
    page.locator('[data-testid="stSlider"] input[type="range"]').first.focus()
    page.keyboard.press("Home")
    wait_idle(page)
    after = (metric(page, "FPR (test)"), metric(page, "TPR (test)"))
    assert after == ("100.0%", "100.0%") and after != before
    page.keyboard.press("End")
    wait_idle(page)
    assert metric(page, "FPR (test)") == "0.0%"
    # Back to a sensible threshold for the screenshot.
    page.locator('[data-testid="stNumberInput"]').filter(has_text="Target FPR").locator("input").fill("0.1")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert_no_errors(page, "Threshold (target FPR)")
    screenshot(page, "threshold")

    step("dataset")
    # 4. Every other page opens with no exception and no error box.
    open_page(page, app, "Dataset")
    assert_no_errors(page, "Dataset")
    assert page.locator('[data-testid="stImage"]').count() == 24  # one page of thumbnails
    choose(page, "Split", "test")
    choose(page, "Type", "hole")
    assert page.locator('[data-testid="stImage"]').count() == 10
    page.locator("button", has_text="Enlarge").first.click()
    wait_idle(page)
    assert page.locator('[data-testid="stImage"]').count() == 11
    assert_no_errors(page, "Dataset (enlarged)")
    screenshot(page, "dataset")

    step("inspect")
    open_page(page, app, "Inspect")
    choose(page, "Type", "hole")
    assert_no_errors(page, "Inspect")
    assert metric(page, "Verdict") == "DEFECT"
    screenshot(page, "inspect")

    step("padim")
    # A second model (PaDiM, trained outside the app into the same folder) for the comparison.
    train_small_model(app["data"] / "surface", app["models"] / "surface-padim.safetensors", "surface padim (small)",
                      method="padim", n_features=50)
    step("compare")
    open_page(page, app, "Compare")
    assert_no_errors(page, "Compare")
    assert page.locator('[data-testid="stImage"]').count() == 4 * 3  # 4 images: original + 2 heatmaps each
    assert page.get_by_text("score ", exact=False).count() >= 8
    screenshot(page, "compare")

    step("done")
    assert "Traceback" not in app["log"].read_text()


def _upload_and_time(page, app: dict, image: Path) -> float:
    """Seconds from choosing a file on Home until its score is shown."""
    open_page(page, app, "")
    started = time.monotonic()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(image)])
    page.locator(".st-key-result-0 [data-testid='stMetricValue']").first.wait_for(timeout=120_000)
    return time.monotonic() - started


def test_inspection_stays_fast_while_a_training_runs(app: dict, page, tmp_path: Path) -> None:
    """Upload on Home while a training job runs: the result comes within 5× the quiet time."""
    generate_demo_dataset(app["data"])  # done already when the test above ran; the same files either way
    if not list(app["models"].glob("*.safetensors")):
        train_small_model(app["data"] / "surface", app["models"] / "quick.safetensors", "quick")
    demo = app["data"] / "surface" / "test"
    images = [Path(shutil.copyfile(demo / "good" / f"{index:03d}.png", tmp_path / f"part{index}.png"))
              for index in range(1, 8)]  # each a new upload: its forward pass is not cached
    _upload_and_time(page, app, images[0])  # warms the model cache
    quiet = statistics.median(_upload_and_time(page, app, image) for image in images[1:4])
    models_before = len(list(app["models"].glob("*.safetensors")))
    open_page(page, app, "Train")
    page.locator('[data-testid="stBaseButton-primaryFormSubmit"]').click()
    page.get_by_role("button", name="Stop training").wait_for(timeout=60_000)  # the job is running
    time.sleep(5)  # past its start-up: extracting features of the good images
    loaded = statistics.median(_upload_and_time(page, app, image) for image in images[4:7])
    print(f"upload on Home (median of 3): quiet {quiet:.2f} s, while training {loaded:.2f} s", flush=True)
    # Measured while the training ran: it writes its file only at its very end.
    assert len(list(app["models"].glob("*.safetensors"))) == models_before, "the training ended too soon"
    deadline = time.monotonic() + TRAIN_TIMEOUT_S  # let the training end before the next test
    while len(list(app["models"].glob("*.safetensors"))) == models_before:
        assert time.monotonic() < deadline, "the training started during the test did not finish"
        time.sleep(1)
    assert loaded <= 5 * quiet, f"quiet {quiet:.2f} s, while a training runs {loaded:.2f} s"
