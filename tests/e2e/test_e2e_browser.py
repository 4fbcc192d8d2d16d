"""End to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download).

The test starts ``streamlit run app.py`` on a free localhost port with an empty models folder and a fresh data
folder, trains the default model on the demo dataset through the Train page (and sees the model file appear),
uploads a good and a defect image on the home page (the defect must score higher and get the DEFECT verdict),
moves the threshold slider (FPR and TPR must change), and opens every page: no exception, no error box.
A false alarm taught as good from the Threshold page scores below the threshold on Inspect, and its undo brings
the old score back. The HTML report of `predict --report` is opened from its file, offline. Screenshots go to
artifacts/screenshots/; with INSPECTION_UPDATE_SCREENSHOTS=1 also to assets/screenshots/ (one per page, for the
README).
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_testing import demo_image, train_small_model
from conftest import REPO
from inspection.data.demo import generate_demo_dataset
from inspection.model.modelfile import read_model_header

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


@contextmanager
def running_app(work: Path) -> Iterator[dict]:
    """`streamlit run app.py` on a free port, with an empty models folder and a fresh data folder under `work`."""
    models, data, log = work / "models", work / "data", work / "streamlit.log"
    models.mkdir()
    port = _free_port()
    env = {**os.environ, "INSPECTION_MODELS_DIR": str(models), "INSPECTION_DATA_DIR": str(data),
           "INSPECTION_OFFLINE": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
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
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The app of the tests below, shared by them (its models folder fills as they go)."""
    _require_browser()
    with running_app(tmp_path_factory.mktemp("e2e")) as started:
        yield started


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium's browsing context, shared by the tests below (no app needed to open one)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = launched.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        yield context
        launched.close()


@pytest.fixture(scope="module")
def page(app: dict, browser):
    return browser.new_page()


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


def images_shown(page, count: int) -> None:
    """Wait until the page shows `count` images (a rerun may still be drawing them), or fail saying how many."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stImage"]')).to_have_count(count, timeout=30_000)


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
    page.keyboard.type(option)  # long lists only draw the options in view: filter first
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def open_local_folder(page, folder: Path) -> None:
    """Sidebar: Source → Local folder, then type the folder's path."""
    page.get_by_text("Local folder").click()
    wait_idle(page)
    path_box = page.locator('[data-testid="stTextInput"]').filter(has_text="type a folder path").locator("input")
    path_box.fill(str(folder))
    path_box.press("Enter")
    wait_idle(page)


def sidebar_model(page) -> str:
    """The model the sidebar's picker shows (a select box shows its value in a text field, not as text)."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Model").first
    field = box.locator("input")
    if not field.count():
        return box.inner_text()
    return " ".join([box.inner_text(), field.input_value(), field.get_attribute("aria-label") or ""])


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
    page.locator('[data-testid="stDataFrame"]').last.wait_for(timeout=30_000)  # the trained models table
    wait_idle(page)
    assert_no_errors(page, "Train (after training)")
    screenshot(page, "train")

    step("upload")
    # 2. Upload a good and a defect image on the home page.
    open_page(page, app, "")
    # The navigation names every page; the first entry is Home, not the entry script's file name.
    entries = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    assert [entry.splitlines()[-1].strip() for entry in entries] == \
        ["Home", "Dataset", "Train", "Threshold", "Inspect", "Compare", "Batch", "Live"], entries
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
    images_shown(page, 24)  # one page of thumbnails
    choose(page, "Split", "test")
    choose(page, "Type", "hole")
    images_shown(page, 10)
    page.locator("button", has_text="Enlarge").first.click()
    wait_idle(page)
    images_shown(page, 11)
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
    images_shown(page, 4 * 3)  # 4 images: original + 2 heatmaps each
    assert page.get_by_text("score ", exact=False).count() >= 8
    screenshot(page, "compare")

    step("done")
    assert "Traceback" not in app["log"].read_text()


def _pick_home_image(page, app: dict, label: str) -> tuple[float, str, str]:
    """(score, verdict, threshold caption) shown on Home for a test image picked from the dataset."""
    open_page(page, app, "")
    page.get_by_text("Pick from the dataset").click()
    wait_idle(page)
    choose(page, "Test image", label)
    caption = page.locator('.st-key-result-0 [data-testid="stCaptionContainer"]', has_text="Threshold 0.5").first \
        .inner_text()
    return float(metric(page, "Anomaly score", ".st-key-result-0")), metric(page, "Verdict", ".st-key-result-0"), \
        caption


def test_a_saved_threshold_is_the_one_every_page_shows(app: dict, page) -> None:
    """Save a threshold between two test images' scores: Home, Inspect and Compare then agree on both."""
    from inspection.model.modelfile import read_model_info

    # The newest model is every page's default pick; the four first test images are Compare's default images.
    headers = {path: read_model_info(path) for path in app["models"].glob("*.safetensors")}
    model_file = max(headers, key=lambda path: headers[path]["info"]["created"])
    header = headers[model_file]
    shown = ["test/good/000.png", "test/hole/000.png", "test/scratch/000.png", "test/stain/000.png"]
    records = sorted((record for record in header["info"]["test_scores"] if record["file"] in shown),
                     key=lambda record: record["score"])
    gaps = [records[index + 1]["score"] - records[index]["score"] for index in range(len(records) - 1)]
    widest = gaps.index(max(gaps))
    below, above = records[widest], records[widest + 1]
    raw = (below["score"] + above["score"]) / 2
    scale = header["calibration"]["image_scale"]
    open_page(page, app, "Threshold")
    exact = page.locator('[data-testid="stNumberInput"]').filter(has_text="Exact threshold").locator("input")
    exact.fill(f"{(raw - scale['offset']) / scale['scale']:.6f}")
    exact.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Save threshold").click()
    wait_idle(page)
    assert read_model_info(model_file)["calibration"]["image_threshold"] == pytest.approx(raw, rel=1e-4)
    scores = {}
    for record, verdict in ((below, "GOOD"), (above, "DEFECT")):
        label = record["file"]
        score, shown_verdict, caption = _pick_home_image(page, app, label)
        assert shown_verdict == verdict and (score > 0.5) == (verdict == "DEFECT"), (label, score, shown_verdict)
        assert "Threshold 0.5 (saved)" in caption
        scores[label] = score
        open_page(page, app, "Inspect")
        kind, name = label.split("/")[-2:]
        choose(page, "Type", kind)
        assert metric(page, "Verdict") == verdict
        assert float(metric(page, "Anomaly score")) == pytest.approx(score, abs=1e-3)
    open_page(page, app, "Compare")
    assert_no_errors(page, "Compare after saving a threshold")
    captions = page.locator('[data-testid="stImageCaption"]').filter(has_text="score ").all_inner_texts()
    models_shown = len(captions) // len(shown)
    for record, verdict in ((below, "GOOD"), (above, "DEFECT")):
        caption = captions[shown.index(record["file"]) * models_shown]  # the first model column: the newest
        assert caption == f"score {scores[record['file']]:.3f} · {verdict}", caption


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
    # Four times the default pixels, so that the job outlasts the three uploads on a fast machine as well.
    page.get_by_text("Preprocessing").click()
    for label, value in (("resize", "512"), ("crop", "448")):
        number = page.locator('[data-testid="stNumberInput"]').filter(
            has=page.get_by_text(label, exact=True)).locator("input")
        number.fill(value)
        number.press("Tab")
    wait_idle(page)
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
    newest = max(app["models"].glob("*.safetensors"), key=lambda path: path.stat().st_mtime)
    trained = read_model_header(newest).params
    assert (trained["resize"], trained["crop"]) == (512, 448), "the form's resolution did not reach the training"
    assert loaded <= 5 * quiet, f"quiet {quiet:.2f} s, while a training runs {loaded:.2f} s"


def test_first_use_with_a_local_folder_open_trains_on_it_and_says_when_a_model_does_not_fit(page,
                                                                                           tmp_path: Path) -> None:
    """A fresh app with a local MVTec folder open: the first upload trains on that folder; another dataset's
    images then get the note that the model was trained on another category."""
    work = tmp_path / "fresh"
    work.mkdir()
    own = Path(shutil.copytree(generate_demo_dataset(tmp_path / "demo"), work / "line3" / "panels"))
    with running_app(work) as fresh:
        open_page(page, fresh, "")
        open_local_folder(page, own)
        upload = Path(shutil.copyfile(own / "test" / "hole" / "000.png", tmp_path / "part.png"))
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(upload)])
        page.locator('[data-testid="stAlertContentInfo"]', has_text="Training a first model").wait_for(timeout=60_000)
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while not list(fresh["models"].glob("*.safetensors")):
            assert time.monotonic() < deadline, fresh["log"].read_text()
            time.sleep(1)
        from inspection.model.modelfile import read_model_info

        info = read_model_info(next(fresh["models"].glob("*.safetensors")))["info"]
        assert (info["category"], info["data_path"]) == ("panels", str(own))
        # The demo dataset open, the same upload: the model of 'panels' says it was made for other images.
        open_page(page, fresh, "")
        page.get_by_text("Demo dataset").click()
        wait_idle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(upload)])
        page.locator(".st-key-result-0 [data-testid='stMetricValue']").first.wait_for(timeout=120_000)
        wait_idle(page)
        warning = page.locator('[data-testid="stAlertContentWarning"]', has_text="trained on 'panels' images")
        assert warning.count() == 1
        assert "Traceback" not in fresh["log"].read_text()


def test_the_html_report_opens_offline_in_chromium_and_lists_every_image(browser, demo_root: Path,
                                                                        tmp_path: Path) -> None:
    """`predict --report` on a folder (a file name holding a script tag among them): the one file opens in
    Chromium with nothing loaded from elsewhere, no script run, every picture decoded, every image in the table."""
    from inspection.cli import main

    model = train_small_model(demo_root, tmp_path / "small.safetensors")
    folder = tmp_path / "incoming"
    folder.mkdir()
    names = ["good.png", "hole.png", "<script>alert(1)<.script>.png"]
    for index, (name, kind) in enumerate(zip(names, ["good", "hole", "hole"])):
        shutil.copyfile(demo_root / "test" / kind / f"{index:03d}.png", folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["--quiet", "predict", "--model", str(model), str(folder), "--out", str(out), "--report"]) == 0
    report = browser.new_page()
    requests, dialogs = [], []
    report.on("request", lambda request: requests.append(request.url))
    report.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    report.goto((out / "report.html").as_uri())
    report.wait_for_load_state("load")
    rows = report.locator("table tbody tr")
    assert rows.count() == 4
    files = sorted(rows.nth(index).locator("td").nth(1).inner_text() for index in range(4))
    assert files == sorted([*names, "broken.png"])  # the script tag's name is shown as text, not run
    assert "DEFECT" in report.locator("table").inner_text() and "unreadable" in report.locator("table").inner_text()
    assert not dialogs
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
    pictures = report.locator("figure img")
    assert pictures.count() == 3
    assert report.evaluate("() => [...document.images].every(image => image.complete && image.naturalWidth > 0)")
    assert report.locator("svg.histogram rect").count() >= 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    report.close()


def test_a_crack_on_a_kolektor_frame_is_boxed_where_the_ground_truth_is(page, tmp_path: Path) -> None:
    """KolektorSDD, a tall frame with a thin crack: PatchCore fitted from the command line with the feature levels
    that find most of these cracks (layers 16,32: bench/ksdd), the dataset opened as a local folder; on the Inspect
    page a cracked frame is judged DEFECT, a region is drawn, and the mask the boxes outline overlaps the crack's
    ground truth (the page's own IoU)."""
    from conftest import require_shared, run_cli

    category = require_shared() / "data" / "ksdd" / "commutator"
    work = tmp_path / "ksdd"
    work.mkdir()
    with running_app(work) as fresh:
        fitted = run_cli("fit", "--method", "patchcore", "--data", str(category.parent), "--category",
                         category.name, "--layers", "16,32", "--out", str(fresh["models"] / "commutator.safetensors"))
        assert fitted.returncode == 0, fitted.stderr
        open_page(page, fresh, "")
        open_local_folder(page, category)
        # The sidebar's link keeps the session (and so the chosen folder); a new address would start a new one.
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Inspect").click()
        wait_idle(page)
        choose(page, "Type", "crack")
        choose(page, "Image", "crack/kos29_Part0.jpg")
        assert_no_errors(page, "Inspect on a KolektorSDD crack")
        assert metric(page, "Verdict") == "DEFECT"
        assert int(metric(page, "Defect regions")) >= 1
        overlap = metric(page, "Mask vs ground truth")
        assert overlap.startswith("IoU ") and float(overlap.split()[1]) > 0, overlap
        screenshot(page, "inspect-ksdd")
        assert "Traceback" not in fresh["log"].read_text()


def test_what_the_app_cannot_judge_it_says_so(page, tmp_path: Path, bottle_model_files) -> None:
    """A bottle model and a KolektorSDD frame: the verdict is "unlike the training data", not DEFECT; a 1 × 1 image
    gets one line, no score; opening KolektorSDD as a local folder selects its own model."""
    from conftest import require_shared, run_cli

    shared = require_shared() / "data"
    ksdd = shared / "ksdd" / "commutator"
    work = tmp_path / "judge"
    work.mkdir()
    with running_app(work) as fresh:
        # The session's bottle PatchCore (the defaults, fitted once for every test), then a KolektorSDD model: the
        # newer, which the sidebar picks first; the bottle model is chosen in the sidebar.
        shutil.copyfile(bottle_model_files("patchcore"), fresh["models"] / "bottle.safetensors")
        fitted = run_cli("fit", "--method", "patchcore", "--data", str(shared / "ksdd"), "--category", "commutator",
                         "--resize", "128", "--out", str(fresh["models"] / "commutator.safetensors"))
        assert fitted.returncode == 0, fitted.stderr
        open_page(page, fresh, "")
        assert "commutator" in sidebar_model(page)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Model").first.click()
        page.keyboard.type("bottle")
        page.get_by_role("option").filter(has_text="bottle").first.click()
        wait_idle(page)
        assert "bottle" in sidebar_model(page)
        frame = Path(shutil.copyfile(ksdd / "test" / "crack" / "kos29_Part0.jpg", tmp_path / "frame.jpg"))
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(frame)])
        page.locator(".st-key-result-0 [data-testid='stMetricValue']").first.wait_for(timeout=120_000)
        wait_idle(page)
        assert_no_errors(page, "Home with a KolektorSDD frame and a bottle model")
        assert metric(page, "Verdict", ".st-key-result-0") == "UNLIKE"
        assert page.locator('[data-testid="stAlertContentWarning"]',
                            has_text="unlike the model's training images").count() == 1
        screenshot(page, "unlike-training")

        tiny = tmp_path / "tiny.png"
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(tiny)])
        page.locator('[data-testid="stAlertContentError"]', has_text="1 × 1 px").wait_for(timeout=60_000)
        wait_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
        # One box, one line (the box's icon is named in its text: not a line of the message).
        lines = [line for line in errors[0].splitlines() if line.strip() not in ("", "warning", "error")]
        assert len(errors) == 1 and len(lines) == 1, errors
        # The tiny image's own result holds the line and no score or verdict (the uploader keeps the frame too).
        tiny_result = page.locator('[class*="st-key-result-"]').filter(has=page.locator(
            '[data-testid="stAlertContentError"]', has_text="1 × 1 px"))
        assert tiny_result.count() == 1 and tiny_result.locator('[data-testid="stMetric"]').count() == 0

        open_local_folder(page, ksdd)
        assert "commutator" in sidebar_model(page)
        assert "Traceback" not in fresh["log"].read_text()


def _demo_video(demo_root: Path, path: Path, fps: float, repeats: int) -> Path:
    """A video of the demo test images (good and defect), `repeats` times over, at `fps`."""
    import cv2

    files = sorted((demo_root / "test").glob("*/*.png"))
    frames = [np.asarray(Image.open(file).convert("RGB")) for file in files]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    for _ in range(repeats):
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def test_the_live_page_runs_a_pipeline_from_a_video_and_stops_it(page, tmp_path: Path) -> None:
    """Live: a video of the demo test images as the source and a CSV sink; the counts and the control chart move
    while it plays; Stop ends it and the CSV holds one row per scored frame."""
    work = tmp_path / "live"
    work.mkdir()
    with running_app(work) as fresh:
        demo_root = generate_demo_dataset(fresh["data"])
        train_small_model(demo_root, fresh["models"] / "live.safetensors", name="live")
        video = _demo_video(demo_root, tmp_path / "line.mkv", fps=5.0, repeats=20)
        verdicts = tmp_path / "verdicts.csv"
        # A page's address opened first in a new tab: the navigation is the app's own from the start (Home first,
        # no "app" entry from a folder Streamlit would list by itself).
        first = page.context.new_page()
        open_page(first, fresh, "Live")
        entries = first.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
        assert [entry.splitlines()[-1].strip() for entry in entries][:2] == ["Home", "Dataset"], entries
        first.close()
        open_page(page, fresh, "Live")
        assert_no_errors(page, "Live before starting")
        page.locator('[data-testid="stTextInput"]').filter(has_text="Source").locator("input").fill(str(video))
        page.locator('[data-testid="stTextArea"]').filter(has_text="Sinks").locator("textarea").fill(
            f"csv:{verdicts}")
        page.get_by_role("button", name="Start").click()
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=60_000)
        first = int(metric(page, "Scored"))
        deadline = time.monotonic() + 30
        while int(metric(page, "Scored")) <= first + 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        later = int(metric(page, "Scored"))
        assert later > first + 3, (first, later)
        assert int(metric(page, "Received")) >= later
        assert page.locator('[data-testid="stImage"]').count() >= 1  # the latest frame's heatmap
        assert_no_errors(page, "Live while running")
        screenshot(page, "live")
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("stopped", exact=False).first.wait_for(timeout=30_000)
        time.sleep(1.5)
        scored = int(metric(page, "Scored"))
        time.sleep(2.5)
        assert int(metric(page, "Scored")) == scored  # stopped: the counts no longer move
        rows = verdicts.read_text().strip().splitlines()
        assert len(rows) == scored + 1  # the header, then one row per scored frame
        assert_no_errors(page, "Live after stopping")
        assert "Traceback" not in fresh["log"].read_text()


def test_a_false_alarm_taught_as_good_scores_below_the_threshold_and_undo_brings_it_back(page,
                                                                                        tmp_path: Path) -> None:
    """Teaching (issue 25), in the browser: on the Threshold page a false alarm's thumbnail says "Good";
    the decision is recorded under the name typed in the sidebar and said in one line; on Inspect the image now
    scores below the threshold (PatchCore learned it: with the model's seed the first image taught as good is
    learned, not put in the calibration set), the version names the decision and the history lists it; its undo
    brings the old score back."""
    from playwright.sync_api import expect

    from inspection.data.datasets import open_dataset
    from inspection.model.modelfile import save_thresholds
    from inspection.registry import create_model
    from inspection.teach.decisions import CALIBRATION, LEARNED
    from inspection.teach.teaching import _goes_to_calibration, history
    from inspection.workflows.train import fit_on_dataset
    from inspection_app.teach_view import default_who

    work = tmp_path / "teach"
    work.mkdir()
    with running_app(work) as fresh:
        demo_root = generate_demo_dataset(fresh["data"])
        # PatchCore at its defaults: at its working size a false alarm's worst patches are new to the memory bank
        # (at the tests' small size of 96 px the bank covers them already, and learning adds no row).
        model = create_model("patchcore")
        fit_on_dataset(model, open_dataset(demo_root))
        model.info["display_name"] = "taught patchcore"
        model_file = model.save(fresh["models"] / "taught.safetensors")
        header = read_model_header(model_file)
        goods = sorted((record for record in header.info.test_scores if record["label"] == 0),
                       key=lambda record: -record["score"])
        if goods[0]["score"] <= header.calibration.image_threshold:  # no false alarm at the saved threshold
            save_thresholds(model_file, image_threshold=(goods[0]["score"] + goods[1]["score"]) / 2)
        stem = goods[0]["file"].rsplit("/", 2)[-2] + "/" + Path(goods[0]["file"]).stem  # e.g. good/018
        name = Path(goods[0]["file"]).name
        expected = CALIBRATION if _goes_to_calibration(0, header.params["seed"]) else LEARNED
        assert expected == LEARNED  # the model's seed (0) sends the fourth image taught as good to calibration

        open_page(page, fresh, "Threshold")
        assert_no_errors(page, "Threshold before teaching")
        who = page.locator('[data-testid="stSidebar"] [data-testid="stTextInput"]').filter(
            has_text="Your name").locator("input")
        assert who.input_value() == default_who()  # the computer's user name first
        who.fill("E2E Inspector")
        who.press("Enter")
        wait_idle(page)
        caption = page.locator('[data-testid="stImageCaption"]', has_text=f"{stem} · score")
        shown_before = float(caption.inner_text().rsplit(" ", 1)[-1])
        assert shown_before > 0.5  # a false alarm
        key = "test-" + stem.replace("/", "-") + "-png"  # the thumbnail's buttons, by their keys (CSS-safe)
        # A button with help is drawn twice (the second, hidden, measures it): the one a user sees, by its role.
        page.locator(f".st-key-teach-good-{key}").get_by_role("button", name="Good").click()  # a thumbnail: short
        wait_idle(page)
        assert_no_errors(page, "Threshold after teaching")
        decisions = history(model_file)
        assert len(decisions) == 1
        decision = decisions[0]
        assert (decision.who, decision.action, decision.use) == ("E2E Inspector", "good", expected)
        assert decision.score_before == pytest.approx(shown_before, abs=1e-3)
        outcome = page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"{name}: ").inner_text()
        assert f"learned, {decision.learned['rows_added']} bank rows; score {shown_before:.3f} → " in outcome
        assert decision.learned["rows_added"] > 0 and decision.score_after < 0.5
        assert "now below the threshold (0.5)" in outcome
        # A decision reruns the page twice (the decision, then the page that shows it): wait for the second.
        expect(page.locator(f".st-key-teach-good-{key}")).to_have_count(0)
        expect(page.get_by_text("Taught good by E2E Inspector: learned", exact=False)).to_have_count(1)
        expect(page.get_by_text("Taught images backing the promise: 0 of the", exact=False)).to_have_count(1)

        # The thumbnail's Inspect link: the image scored by the model as it is now.
        page.locator(f".st-key-inspect-{key}").get_by_role("button", name="Inspect").click()
        wait_idle(page)
        page.locator('[data-testid="stMetric"]').filter(has_text="Anomaly score").first.wait_for()
        assert_no_errors(page, "Inspect after teaching")
        score = float(metric(page, "Anomaly score"))
        assert score < 0.5 and score == pytest.approx(decision.score_after, abs=1e-3)
        assert metric(page, "Verdict") == "GOOD"
        assert page.get_by_text(" · taught 1 · threshold 0.5", exact=False).count() == 1
        assert page.get_by_text("Taught good by E2E Inspector", exact=False).count() == 1
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.locator('[data-testid="stExpander"] summary', has_text="Taught decisions (1)").click()
        listed = sidebar.locator('[data-testid="stExpander"]', has_text="Taught decisions (1)")
        listed.get_by_text(f"{name} is good — learned", exact=False).wait_for()
        assert "E2E Inspector" in listed.inner_text()
        screenshot(page, "teach")

        listed.get_by_role("button", name="Undo").click()
        wait_idle(page)
        assert_no_errors(page, "Inspect after the undo")
        page.locator('[data-testid="stAlertContentInfo"]', has_text=f"Undone: {name} taught as good").wait_for()
        assert history(model_file) == []
        expect(page.get_by_text("taught 1", exact=False)).to_have_count(0)
        expect(page.get_by_role("button", name="This part is good")).to_have_count(1)  # it can be taught again
        assert float(metric(page, "Anomaly score")) == pytest.approx(shown_before, abs=1e-3)
        assert metric(page, "Verdict") == "DEFECT"
        assert "Traceback" not in fresh["log"].read_text()


def test_the_service_docs_page_renders_without_internet(browser, bottle_model_files, tmp_path: Path) -> None:
    """`inspection serve`'s /docs in a real browser, on a machine without internet (as this one and many line PCs
    are): Swagger UI comes from the service itself and lists the three endpoints."""
    pytest.importorskip("fastapi")
    environment = {key: value for key, value in os.environ.items() if key != "INSPECTION_API_TOKEN"}
    process = subprocess.Popen([sys.executable, "-m", "inspection", "serve", "--model",
                                str(bottle_model_files("patchcore")), "--port", "0"], cwd=REPO, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page = browser.new_page()
    try:
        line = process.stdout.readline()
        assert line.startswith("serving "), (line, process.poll() is not None and process.stderr.read())
        page.goto(line.split(" at ", 1)[1].split(" ", 1)[0] + "/docs")
        operations = page.locator(".opblock-summary-path")
        operations.filter(has_text="/v1/inspect").wait_for(timeout=60_000)
        assert sorted(operations.all_inner_texts()) == ["/v1/health", "/v1/inspect", "/v1/model"]
        assert page.get_by_text("Unable to render this definition").count() == 0
    finally:
        page.close()
        process.terminate()
        process.wait(timeout=20)


def test_a_model_exported_on_the_train_page_downloads_and_scores_on_the_runtime(browser, demo_root: Path,
                                                                                tmp_path: Path) -> None:
    """From the browser to the line: on the Train page "Export for the line", then the zip downloaded by the
    browser, unpacked, scores a demo image on onnxruntime as the model file does."""
    pytest.importorskip("onnxruntime")  # the export extra, which CI installs
    import zipfile

    from inspection.registry import load_model
    from inspection.runtime import load_export

    work = tmp_path / "export"
    work.mkdir()
    with running_app(work) as fresh:
        model_file = train_small_model(demo_root, fresh["models"] / "line.safetensors", "line model")
        page = browser.new_page()
        try:
            open_page(page, fresh, "Train")
            page.get_by_role("button", name="Export for the line").click()
            page.locator('[data-testid="stAlertContentSuccess"]', has_text="Exported line model").wait_for(
                timeout=300_000)
            wait_idle(page)
            assert_no_errors(page, "Train page after the export")
            with page.expect_download() as download:
                page.get_by_role("button", name="Download the export (zip)").click()
            archive = tmp_path / download.value.suggested_filename
            download.value.save_as(archive)
            screenshot(page, "export")
        finally:
            page.close()
        assert "Traceback" not in fresh["log"].read_text()
    with zipfile.ZipFile(archive) as unpacked:
        unpacked.extractall(tmp_path / "line-pc")
    image = demo_image(demo_root, "hole")
    expected = load_model(model_file).predict([image])
    got = load_export(tmp_path / "line-pc" / "line", "onnx").predict([image])
    assert np.array_equal(got.verdicts, expected.verdicts)
    assert abs(float(got.raw_scores[0]) - float(expected.raw_scores[0])) <= 1e-3 * abs(float(expected.raw_scores[0]))
