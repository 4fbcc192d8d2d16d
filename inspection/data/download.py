"""Downloading one MVTec AD category from its official site into a data folder, all or nothing.

The archive is streamed into a temporary file inside the data folder, unpacked (safely: no absolute
paths, no '..', no links) into a temporary folder beside it, checked to be an MVTec category, then
renamed into place. Any failure (offline, interrupted, wrong archive) removes every temporary, so a
category folder that exists is always complete. The URL is a setting: env ``INSPECTION_MVTEC_URL``
(a template with ``{category}``) or the `url` argument; by default, the official per-category archives.
"""

from __future__ import annotations

import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DownloadError, ParameterError
from .datasets import GOOD

MVTEC_URL_ENV = "INSPECTION_MVTEC_URL"
MVTEC_SUBFOLDER = "mvtec_ad"
CHUNK_BYTES = 1 << 20

_MYDRIVE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
#: The official per-category archives of MVTec AD (CC BY-NC-SA 4.0), as linked from mvtec.com.
MVTEC_URLS: dict[str, str] = {
    "bottle": _MYDRIVE + "420937370-1629951468/bottle.tar.xz",
    "cable": _MYDRIVE + "420937413-1629951498/cable.tar.xz",
    "capsule": _MYDRIVE + "420937454-1629951595/capsule.tar.xz",
    "carpet": _MYDRIVE + "420937484-1629951672/carpet.tar.xz",
    "grid": _MYDRIVE + "420937487-1629951814/grid.tar.xz",
    "hazelnut": _MYDRIVE + "420937545-1629951845/hazelnut.tar.xz",
    "leather": _MYDRIVE + "420937607-1629951964/leather.tar.xz",
    "metal_nut": _MYDRIVE + "420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
            "420938129-1629953099/pill.tar.xz",
    "screw": _MYDRIVE + "420938130-1629953152/screw.tar.xz",
    "tile": _MYDRIVE + "420938133-1629953189/tile.tar.xz",
    "toothbrush": _MYDRIVE + "420938134-1629953256/toothbrush.tar.xz",
    "transistor": _MYDRIVE + "420938166-1629953277/transistor.tar.xz",
    "wood": _MYDRIVE + "420938383-1629953354/wood.tar.xz",
    "zipper": _MYDRIVE + "420938385-1629953449/zipper.tar.xz",
}
MVTEC_CATEGORIES: tuple[str, ...] = tuple(MVTEC_URLS)

#: (bytes done, bytes total or 0 when unknown, stage "download" | "extract")
DownloadProgress = Callable[[int, int, str], None]


def category_url(category: str, url: str | None = None) -> str:
    """The archive URL of a category: `url` (may hold '{category}'), else env INSPECTION_MVTEC_URL, else official."""
    if category not in MVTEC_URLS:
        raise ParameterError(f"unknown MVTec AD category {category!r}; known: {', '.join(MVTEC_CATEGORIES)}")
    template = (url or os.environ.get(MVTEC_URL_ENV, "")).strip()
    chosen = template.replace("{category}", category) if template else MVTEC_URLS[category]
    # Only web addresses: file://, ftp:// and the like would read this machine's files or other services.
    parts = urllib.parse.urlsplit(chosen)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ParameterError(f"{chosen!r} is not an http(s) address: only http:// and https:// URLs are accepted")
    return chosen


def mvtec_root(data_dir: str | os.PathLike) -> Path:
    """Where downloaded categories go: DATA_DIR/mvtec_ad/."""
    return Path(data_dir).expanduser() / MVTEC_SUBFOLDER


def _safe_members(archive: tarfile.TarFile, label: str) -> list[tarfile.TarInfo]:
    """The archive's files and folders; refuses absolute paths, '..', links and devices."""
    members = archive.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts:
            raise DownloadError(f"{label}: unsafe path {member.name!r} in the archive; refused")
        if not (member.isfile() or member.isdir()):
            raise DownloadError(f"{label}: archive member {member.name!r} is not a plain file or folder; refused")
    return members


def _find_category(extracted: Path, category: str) -> Path:
    """The extracted folder holding CATEGORY/train/good (at the top or one level down)."""
    for candidate in (extracted / category, *sorted(extracted.glob(f"*/{category}"))):
        if (candidate / "train" / GOOD).is_dir():
            return candidate
    raise DownloadError(f"the downloaded archive does not contain {category}/train/good: not an MVTec AD "
                        f"category archive")


def _fetch(url: str, target: Path, progress: DownloadProgress, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "inspection-app"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            progress(0, total, "download")
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                done += len(chunk)
                progress(done, total, "download")
            if total and done != total:
                raise DownloadError(f"download of {url} was cut off after {done} of {total} bytes")
    except urllib.error.HTTPError as error:
        raise DownloadError(f"the server refused {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot download {url}: {reason}. Is this machine offline? Copy the category "
                            "folder by hand and choose it as a local folder instead.") from error


def download_mvtec_category(category: str, data_dir: str | os.PathLike, url: str | None = None,
                            progress: DownloadProgress | None = None, timeout: float = 30.0) -> Path:
    """Download and unpack one MVTec AD category into DATA_DIR/mvtec_ad/CATEGORY (reused when present)."""
    source = category_url(category, url)
    root = mvtec_root(data_dir)
    target = root / category
    if (target / "train" / GOOD).is_dir():
        return target
    if target.exists():
        raise DownloadError(f"{target} exists but is not an MVTec AD category (no train/good): move it away first")
    progress = progress or (lambda done, total, stage: None)
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{category}-download-", dir=root))
    try:
        archive_path = workspace / "archive"
        _fetch(source, archive_path, progress, timeout)
        extracted = workspace / "extracted"
        extracted.mkdir()
        try:
            with tarfile.open(archive_path, "r:*") as archive:
                members = _safe_members(archive, source)
                for index, member in enumerate(members):
                    archive.extract(member, extracted, set_attrs=False, filter="data")
                    if index % 50 == 0:
                        progress(index, len(members), "extract")
                progress(len(members), len(members), "extract")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"{source}: not a readable .tar/.tar.xz/.tar.gz archive ({error})") from error
        found = _find_category(extracted, category)
        os.chmod(found, 0o755)
        try:
            os.rename(found, target)
        except OSError:
            if not (target / "train" / GOOD).is_dir():  # someone else finishing first is fine
                raise
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return target


def downloaded_categories(data_dir: str | os.PathLike) -> list[str]:
    """Categories already present in DATA_DIR/mvtec_ad."""
    root = mvtec_root(data_dir)
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()
                  if not entry.name.startswith(".") and (entry / "train" / GOOD).is_dir())
