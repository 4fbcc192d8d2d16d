"""Downloading an MVTec AD category, against a local HTTP server on 127.0.0.1 serving small archives."""

from __future__ import annotations

import io
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app_testing import add_to_archive, category_archive, http_server, png_bytes
from inspection.data.datasets import open_dataset
from inspection.data.download import (
    MVTEC_CATEGORIES,
    MVTEC_URL_ENV,
    MVTEC_URLS,
    category_url,
    download_mvtec_category,
    downloaded_categories,
    mvtec_root,
)
from inspection.errors import DownloadError


def _evil_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_to_archive(archive, "bottle/train/good/000.png", png_bytes(1))
        add_to_archive(archive, "../escaped.txt", b"outside")
    return buffer.getvalue()


def _wrong_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        add_to_archive(archive, "something/else.txt", b"not a category")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 (random port); yields its base URL."""
    served = tmp_path_factory.mktemp("served")
    (served / "bottle.tar.xz").write_bytes(category_archive("bottle"))
    (served / "wood.tar.gz").write_bytes(category_archive("wood", "w:gz"))
    (served / "nested.tar").write_bytes(category_archive("mvtec_anomaly_detection/grid", "w"))
    (served / "evil.tar.gz").write_bytes(_evil_archive())
    (served / "wrong.tar.gz").write_bytes(_wrong_archive())
    (served / "garbage.tar.xz").write_bytes(b"this is not an archive" * 100)
    with http_server(served) as url:
        yield url


def _leftovers(data_dir: Path) -> list[str]:
    root = mvtec_root(data_dir)
    return sorted(path.name for path in root.iterdir()) if root.exists() else []


def test_download_unpacks_a_category_with_progress(server: str, tmp_path: Path) -> None:
    reports: list[tuple[int, int, str]] = []
    path = download_mvtec_category("bottle", tmp_path, url=f"{server}/{{category}}.tar.xz",
                                   progress=lambda done, total, stage: reports.append((done, total, stage)))
    assert path == tmp_path / "mvtec_ad" / "bottle"
    dataset = open_dataset(path)
    assert dataset.counts() == {"train": {"good": 3}, "test": {"broken": 1, "good": 1}}
    assert dataset.has_masks()
    downloads = [report for report in reports if report[2] == "download"]
    assert downloads[-1][0] == downloads[-1][1] > 0  # all bytes, of a known total
    assert reports[-1][2] == "extract" and reports[-1][0] == reports[-1][1]
    assert _leftovers(tmp_path) == ["bottle"]  # no temporary left
    assert downloaded_categories(tmp_path) == ["bottle"]


def test_gz_plain_and_nested_archives(server: str, tmp_path: Path) -> None:
    assert open_dataset(download_mvtec_category("wood", tmp_path, url=f"{server}/wood.tar.gz")).category == "wood"
    grid = download_mvtec_category("grid", tmp_path, url=f"{server}/nested.tar")
    assert (grid / "train" / "good" / "000.png").is_file()
    assert _leftovers(tmp_path) == ["grid", "wood"]


def test_existing_category_is_reused_without_network(server: str, tmp_path: Path) -> None:
    download_mvtec_category("bottle", tmp_path, url=f"{server}/bottle.tar.xz")
    again = download_mvtec_category("bottle", tmp_path, url="http://127.0.0.1:9/unreachable.tar.xz")
    assert again == tmp_path / "mvtec_ad" / "bottle"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="offline"):
        download_mvtec_category("bottle", tmp_path, url=f"http://127.0.0.1:{_closed_port()}/bottle.tar.xz",
                                timeout=5)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name, message", [
    ("missing.tar.xz", "HTTP 404"),
    ("garbage.tar.xz", "not a readable .tar"),
    ("truncated.tar.xz", "cut off|not a readable"),
    ("evil.tar.gz", "unsafe path '../escaped.txt'"),
    ("wrong.tar.gz", "does not contain bottle/train/good"),
])
def test_bad_downloads_fail_clearly_and_leave_nothing(server: str, tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        download_mvtec_category("bottle", tmp_path / "data", url=f"{server}/{name}", timeout=10)
    assert _leftovers(tmp_path / "data") == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "escaped.txt").exists()


def test_url_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MVTEC_URL_ENV, raising=False)
    assert category_url("bottle") == MVTEC_URLS["bottle"] and category_url("bottle").endswith("/bottle.tar.xz")
    monkeypatch.setenv(MVTEC_URL_ENV, "http://mirror.example/{category}.tar.xz")
    assert category_url("zipper") == "http://mirror.example/zipper.tar.xz"
    assert category_url("zipper", "http://other/{category}.tgz") == "http://other/zipper.tgz"
    with pytest.raises(ValueError, match="unknown MVTec AD category 'bottles'"):
        category_url("bottles")
    assert len(MVTEC_CATEGORIES) == 15


def test_a_foreign_folder_in_the_way_is_not_touched(tmp_path: Path) -> None:
    foreign = mvtec_root(tmp_path) / "bottle"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="is not an MVTec AD category"):
        download_mvtec_category("bottle", tmp_path, url="http://127.0.0.1:9/x.tar.xz")
    assert (foreign / "mine.txt").read_text() == "keep"
