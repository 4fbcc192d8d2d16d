"""Helpers shared by the app's tests: a small, quickly trained model and image files of the demo dataset."""

from __future__ import annotations

import io
import shutil
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

from inspection.data.datasets import open_dataset
from inspection.registry import create_model
from inspection.workflows.train import fit_on_dataset

REPO = Path(__file__).resolve().parents[1]
# A low working resolution keeps fitting + evaluation to a few seconds on 2 CPU cores.
SMALL_PARAMS = {"resize": 96, "crop": 96}


def train_small_model(demo_root: Path, out: Path, name: str = "small", method: str = "patchcore",
                      **params) -> Path:
    """Fit, evaluate and save a low-resolution model of `method` on the demo dataset."""
    model = create_model(method, **{**SMALL_PARAMS, **params})
    fit_on_dataset(model, open_dataset(demo_root))
    model.info["display_name"] = name
    return model.save(out)


def copy_model(source: Path, folder: Path, name: str | None = None) -> Path:
    """A copy of a model file in `folder` (tests may rename, delete or rewrite it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(source, folder / (name or source.name)))


def demo_image(demo_root: Path, kind: str = "good", index: int = 0) -> Path:
    """A test image of the demo dataset: kind 'good' or a defect type ('hole' is the most visible)."""
    return demo_root / "test" / kind / f"{index:03d}.png"


def incoming_folder(demo_root: Path, folder: Path, kinds: tuple[str, ...] = ("good", "hole", "stain")) -> Path:
    """A folder of demo test images as a line delivers them: one per kind, named after it (good.png, hole.png…)."""
    folder.mkdir(parents=True)
    for kind in kinds:
        shutil.copyfile(demo_image(demo_root, kind), folder / f"{kind}.png")
    return folder


def png_bytes(value: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_to_archive(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def category_archive(category: str, mode: str = "w:xz") -> bytes:
    """A tiny archive of the MVTec shape: CATEGORY/train/good, test/good, test/broken, ground_truth/broken."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for index in range(3):
            add_to_archive(archive, f"{category}/train/good/{index:03d}.png", png_bytes(100 + index))
        add_to_archive(archive, f"{category}/test/good/000.png", png_bytes(100))
        add_to_archive(archive, f"{category}/test/broken/000.png", png_bytes(200))
        add_to_archive(archive, f"{category}/ground_truth/broken/000_mask.png", png_bytes(255))
        add_to_archive(archive, f"{category}/license.txt", b"CC BY-NC-SA 4.0")
    return buffer.getvalue()


class ArchiveHandler(SimpleHTTPRequestHandler):
    """Serves files from `directory`; '/truncated.tar.xz' promises more bytes than it sends."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/truncated.tar.xz":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\xfd7zXZ\x00" + b"\x00" * 100)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 (a free port) serving `folder`; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(ArchiveHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


#: Seconds an app page may take to run in AppTest (a page that trains or scores waits on real work).
PAGE_TIMEOUT = 120


def run_page(page: str, **state) -> AppTest:
    """Run an app page (e.g. "app_pages/4_Inspect.py") in AppTest with the given session state."""
    at = AppTest.from_file(str(REPO / page), default_timeout=PAGE_TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def assert_clean(at: AppTest) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [exception.value for exception in at.exception]
    assert not at.error, [error.value for error in at.error]

