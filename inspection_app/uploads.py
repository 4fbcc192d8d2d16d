"""Uploaded files: allowed types, the size limit, decoding with a message naming the file, a content key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from inspection.data.images import IMAGE_EXTENSIONS, load_image
from inspection.errors import ImageLoadError

UPLOAD_TYPES: tuple[str, ...] = tuple(sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS))
MAX_UPLOAD_MB_ENV = "INSPECTION_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 50  # the same limit as server.maxUploadSize in .streamlit/config.toml


def max_upload_mb() -> int:
    """The upload size limit in MB: env INSPECTION_MAX_UPLOAD_MB, else 50."""
    raw = os.environ.get(MAX_UPLOAD_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_UPLOAD_MB_ENV}={raw!r} is not a whole number of megabytes") from None
    if value <= 0:
        raise ValueError(f"{MAX_UPLOAD_MB_ENV}={raw!r} must be a positive number of megabytes")
    return value


def check_upload(name: str, size_bytes: int, limit_mb: int | None = None) -> None:
    """Refuse a file of the wrong type or above the size limit, with a message naming the file."""
    extension = Path(name).suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        raise ImageLoadError(f"{name}: file type {extension or '(none)'!r} is not an image type this tool reads "
                             f"({', '.join(UPLOAD_TYPES)})")
    limit_mb = max_upload_mb() if limit_mb is None else limit_mb
    if size_bytes > limit_mb * 1024 * 1024:
        raise ImageLoadError(f"{name}: {size_bytes / 1024 / 1024:.1f} MB is above the upload limit of {limit_mb} MB")


def decode_upload(name: str, data: bytes, limit_mb: int | None = None) -> np.ndarray:
    """Check an uploaded file and decode it to H×W×3 uint8 RGB (ImageLoadError naming the file otherwise)."""
    check_upload(name, len(data), limit_mb)
    return load_image(data, name=name)


def content_digest(data: bytes | np.ndarray) -> str:
    """A short hash of file bytes or pixels: the cache key of a forward pass."""
    payload = data.tobytes() + str(data.shape).encode() if isinstance(data, np.ndarray) else bytes(data)
    return hashlib.sha1(payload).hexdigest()[:16]


def upload_label(number: int, name: str) -> str:
    """How an uploaded file is named on the pages: its place in the upload and its name ("2 · part.png"), so two
    files of one name stay apart."""
    return f"{number} · {name}"
