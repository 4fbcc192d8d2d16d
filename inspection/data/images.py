"""Load any real image a user has (files, bytes, uploads) as H×W×3 uint8 RGB, with clear errors.

Every reader here first opens the header only, checks the pixel count against a limit, and only
then decodes. Pillow's own decompression-bomb check is switched off for the duration of that
header read (under a lock) so that it neither warns nor refuses images our own limit allows.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "INSPECTION_MAX_PIXELS"

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

_EXIF_ORIENTATION_TAG = 0x0112
# Pillow modes whose pixels are 16-bit (or wider) integers in a single channel.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Multi-channel modes that Pillow may decode from 16-bit data by dropping the low byte.
_MULTI_CHANNEL_MODES = frozenset({"RGB", "RGBA", "RGBX", "LA", "La", "RGBa"})
# Modes Pillow's Image.reduce can box-average.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})
# Serialises the temporary change of Pillow's global bomb limit (see module docstring).
_PILLOW_LIMIT_LOCK = threading.Lock()


def max_pixels() -> int:
    """The largest width×height accepted: env var INSPECTION_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not an integer pixel count") from None
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive pixel count")
    return value


# --------------------------------------------------------------------------- opening


def _source_label(source: ImageSource, name: str | None) -> str:
    """The name used in error messages: `name`, else the path, else the stream's name."""
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return str(stream_name) if isinstance(stream_name, (str, os.PathLike)) else "<stream>"


def _as_binary_stream(source: ImageSource, label: str) -> BinaryIO:
    """A seekable binary stream over the source; paths are opened (caller closes), streams read."""
    if isinstance(source, (str, os.PathLike)):
        check_regular_file(source, label)
        try:
            stream: BinaryIO = open(source, "rb")
        except OSError as error:
            raise ImageLoadError(f"{label}: cannot open file ({error.strerror or error})") from error
    elif isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        # Uploads may be non-seekable or positioned mid-stream; read what is left into memory.
        try:
            data = source.read()
        except (OSError, ValueError) as error:
            raise ImageLoadError(f"{label}: cannot read stream ({error})") from error
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError(f"{label}: stream returned {type(data).__name__}, expected bytes")
        stream = io.BytesIO(bytes(data))
    else:
        raise TypeError(
            f"{label}: expected a path, bytes or a binary file-like object, got {type(source).__name__}"
        )
    try:
        stream.seek(0, os.SEEK_END)
        empty = stream.tell() == 0
        stream.seek(0)
    except OSError as error:
        stream.close()
        raise ImageLoadError(f"{label}: cannot read file ({error.strerror or error})") from error
    if empty:
        stream.close()
        raise ImageLoadError(f"{label}: empty file")
    return stream


def check_regular_file(path: str | os.PathLike, label: str | None = None) -> None:
    """Refuse anything but a regular, non-empty file — before opening it, which on a FIFO would block forever."""
    label = label or os.fspath(path)
    try:
        info = os.stat(path)  # follows links: a dangling link or a loop fails here
    except FileNotFoundError:
        kind = "a link to nothing (dangling)" if os.path.islink(path) else "file not found"
        raise ImageLoadError(f"{label}: {kind}") from None
    except OSError as error:
        raise ImageLoadError(f"{label}: cannot open ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(f"{label}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(f"{label}: not a regular file (a pipe, socket or device): refused")
    if info.st_size == 0:
        # /proc and /sys entries report size 0 too: never read them as images.
        raise ImageLoadError(f"{label}: empty file (or a special file of the system)")


def _open_header(stream: BinaryIO, label: str) -> Image.Image:
    """Image.open without Pillow's global bomb limit (header only: no pixels are decoded here)."""
    with _PILLOW_LIMIT_LOCK:
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(stream)
        except UnidentifiedImageError as error:
            raise ImageLoadError(f"{label}: not an image file or unsupported format") from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageLoadError(f"{label}: unreadable image header ({error})") from error
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit


@contextmanager
def _opened(
    source: ImageSource, label: str, limit: int | None
) -> Iterator[tuple[Image.Image, BinaryIO]]:
    """Open the header, refuse oversized images before decoding, and close everything after.

    Yields the lazily-opened image and its underlying stream (for the OpenCV fallback).
    """
    stream = _as_binary_stream(source, label)
    try:
        image = _open_header(stream, label)
        with image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageLoadError(f"{label}: image has no pixels ({width}×{height})")
            if limit is not None and width * height > limit:
                raise ImageLoadError(
                    f"{label}: image too large ({width}×{height} = {width * height:,} pixels, "
                    f"limit {limit:,}; raise it with {MAX_PIXELS_ENV})"
                )
            yield image, stream
    finally:
        stream.close()


def _resolve_limit(limit: int | None) -> int:
    if limit is None:
        return max_pixels()
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {limit!r}")
    return int(limit)


# --------------------------------------------------------------------------- decoding


def _tile_rawmode(image: Image.Image) -> str:
    """The raw pixel layout Pillow will decode from (e.g. 'RGB;16B'), or '' when unknown."""
    tiles = getattr(image, "tile", None) or []
    if not tiles:
        return ""
    args = tiles[0].args if hasattr(tiles[0], "args") else tiles[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else ""


def _is_wide_multichannel(image: Image.Image) -> bool:
    """True for 16-bit colour (or gray+alpha) data that Pillow would truncate to 8 bits."""
    return image.mode in _MULTI_CHANNEL_MODES and "16" in _tile_rawmode(image)


def _decode(image: Image.Image, label: str) -> None:
    """Decode pixels, turning truncation and codec failures into ImageLoadError."""
    try:
        image.load()
    except Image.DecompressionBombError as error:  # pragma: no cover - limit disabled at open
        raise ImageLoadError(f"{label}: image too large ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        raise ImageLoadError(f"{label}: file is truncated or corrupt ({error})") from error


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) without decoding pixels where the format allows it."""
    try:
        if image.format == "PNG":
            # PngImageFile.getexif() decodes the whole image when the eXIf chunk follows the pixels.
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()
        orientation = int(exif.get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block must not make the picture unreadable
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an H×W(×C) array, matching ImageOps.exif_transpose."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return np.swapaxes(array, 0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return np.swapaxes(array, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _decode_wide_with_cv2(image: Image.Image, stream: BinaryIO, label: str) -> np.ndarray:
    """Decode 16-bit colour data with OpenCV (Pillow keeps only the high byte): H×W×C, RGB order."""
    stream.seek(0)
    encoded = np.frombuffer(stream.read(), dtype=np.uint8)
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageLoadError(f"{label}: file is truncated or corrupt (16-bit data could not be decoded)")
    if decoded.ndim == 3:
        channels = decoded.shape[2]
        # OpenCV returns BGR / BGRA; gray+alpha also comes back as BGRA.
        decoded = decoded[..., [2, 1, 0, 3]] if channels == 4 else decoded[..., ::-1]
    return _apply_orientation(decoded, _exif_orientation(image))


def _rescale_16bit(values: np.ndarray) -> np.ndarray:
    """Map the full 16-bit range onto 8 bits: round(v*255/65535); never clips mid-range values."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    """32-bit integer gray ('I'): treated as 16-bit data if it fits, else min–max scaled."""
    if values.size and values.min() >= 0 and values.max() <= 65535:
        return _rescale_16bit(values)
    return _float_to_uint8(values.astype(np.float64), assume_unit_range=False)


def _float_to_uint8(values: np.ndarray, *, assume_unit_range: bool = True) -> np.ndarray:
    """Float gray: taken as [0, 1] when all finite values lie there, otherwise min–max scaled.

    Non-finite values (NaN, ±inf) become 0 so one bad pixel cannot blank the whole image.
    """
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0).astype(np.float64)
    low, high = (float(clean.min()), float(clean.max())) if clean.size else (0.0, 0.0)
    if assume_unit_range and low >= 0.0 and high <= 1.0:
        scaled = clean
    elif high > low:
        scaled = (clean - low) / (high - low)
    else:
        scaled = np.zeros_like(clean)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gray_to_uint8(image: Image.Image) -> np.ndarray:
    """Single-channel 16-bit / 32-bit / float data as H×W uint8."""
    values = np.asarray(image)
    if image.mode == "F":
        return _float_to_uint8(values)
    if image.mode == "I":
        return _int_to_uint8(values)
    return _rescale_16bit(values)


def _to_rgb_uint8(image: Image.Image, label: str) -> np.ndarray:
    """Convert a decoded, oriented Pillow image of any mode into H×W×3 uint8 RGB."""
    mode = image.mode
    if mode == "RGB":
        rgb = np.asarray(image)
    elif mode == "L":
        rgb = np.repeat(np.asarray(image)[..., None], 3, axis=2)
    elif mode == "1":
        rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
    elif mode in _WIDE_GRAY_MODES or mode == "F":
        rgb = np.repeat(_gray_to_uint8(image)[..., None], 3, axis=2)
    else:
        try:
            # P with transparency goes through RGBA so Pillow does not warn; alpha is then dropped.
            converted = image.convert("RGBA").convert("RGB") if mode in ("P", "PA") else image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ImageLoadError(f"{label}: unsupported colour mode {mode!r} ({error})") from error
        rgb = np.asarray(converted)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _wide_to_rgb_uint8(decoded: np.ndarray) -> np.ndarray:
    """OpenCV-decoded 16-bit data (H×W, H×W×3 or H×W×4, RGB order) as H×W×3 uint8, alpha dropped."""
    if decoded.dtype == np.uint16:
        eight_bit = _rescale_16bit(decoded)
    elif decoded.dtype == np.uint8:
        eight_bit = decoded
    else:
        eight_bit = _float_to_uint8(decoded.astype(np.float64))
    if eight_bit.ndim == 2:
        eight_bit = np.repeat(eight_bit[..., None], 3, axis=2)
    elif eight_bit.shape[2] == 4:
        eight_bit = eight_bit[..., :3]
    return np.ascontiguousarray(eight_bit)


# --------------------------------------------------------------------------- public API


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Read an image file, bytes or binary stream as an H×W×3 uint8 RGB, C-contiguous array.

    EXIF orientation is applied. Grayscale is replicated to three channels, alpha is dropped,
    16-bit data is rescaled over the full 16-bit range. `name` labels bytes/streams in messages.
    Raises ImageLoadError (message "NAME: reason") for anything that is not a readable image or
    whose width×height exceeds `max_pixels` (default: `max_pixels()`), checked before decoding.

    With `max_side`, an image whose longer side exceeds it comes back shrunk (area interpolation) to fit:
    a 100 Mpx line-camera frame then costs a few hundred MB once, not gigabytes in every later step. JPEG
    files are decoded at a reduced scale straight away (Pillow's draft mode).
    """
    return load_image_with_size(source, name=name, max_pixels=max_pixels, max_side=max_side)[0]


def load_image_with_size(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """`load_image`, and the file's own (height, width) after EXIF orientation: what the image measures before any
    shrink to `max_side` (areas are reported in it, and the smallest image a model judges is checked on it)."""
    label = _source_label(source, name)
    limit = _resolve_limit(max_pixels)
    with _opened(source, label, limit) as (image, stream):
        width, height = image.size
        size = (width, height) if _exif_orientation(image) in (5, 6, 7, 8) else (height, width)
        if _is_wide_multichannel(image):
            return _shrink(_wide_to_rgb_uint8(_decode_wide_with_cv2(image, stream, label)), max_side), size
        if max_side is not None and image.format == "JPEG" and max(image.size) > max_side:
            # The DCT decoder scales by 1/2, 1/4 or 1/8 while decoding: never below the size asked for.
            scale = max(image.size) / max_side
            image.draft(image.mode, (int(image.size[0] / scale) + 1, int(image.size[1] / scale) + 1))
        _decode(image, label)
        if max_side is not None and max(image.size) > max_side and image.mode in _REDUCIBLE_MODES:
            # Shrink in the file's own mode first: a 100 Mpx grey frame never becomes a 300 MB RGB array.
            orientation = _exif_orientation(image)  # the shrunk copy carries no EXIF
            shrunk = _to_rgb_uint8(box_shrink(image, max_side), label)
            return np.ascontiguousarray(_apply_orientation(shrunk, orientation)), size
        oriented = ImageOps.exif_transpose(image)
        return _shrink(_to_rgb_uint8(oriented, label), max_side), size


def box_shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A picture larger than `max_side` shrunk to fit as files are shrunk when decoded: an integer box reduction
    (cheap), then an exact box resample to the final size. Live frames are shrunk by the same steps."""
    scale = max_side / max(image.size)
    shrunk_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    reduced = image.reduce(max(image.size) // max_side) if max(image.size) >= 2 * max_side else image
    return reduced.resize(shrunk_size, Image.Resampling.BOX)


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image scaled down (area interpolation) so that its longer side is at most `max_side`."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def load_mask(path: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None) -> np.ndarray:
    """Read a ground-truth mask as H×W bool: any nonzero pixel (in any colour channel) is defect.

    Raw values are tested, so a 16-bit mask with value 1 still counts; alpha is ignored and
    palette masks are judged by their colours. Errors as in load_image.
    """
    label = _source_label(path, name)
    with _opened(path, label, max_pixels()) as (image, stream):
        if _is_wide_multichannel(image):
            decoded = _decode_wide_with_cv2(image, stream, label)
            colour = decoded if decoded.ndim == 2 else decoded[..., : 3 if decoded.shape[2] >= 3 else 1]
            mask = colour != 0 if colour.ndim == 2 else np.any(colour != 0, axis=2)
            return np.ascontiguousarray(mask)
        _decode(image, label)
        oriented = ImageOps.exif_transpose(image)
        mode = oriented.mode
        if mode in ("1", "L", "F") or mode in _WIDE_GRAY_MODES:
            values = np.asarray(oriented)
            mask = np.isfinite(values) & (values != 0) if mode == "F" else values != 0
        elif mode in ("LA", "La"):
            mask = np.asarray(oriented)[..., 0] != 0
        else:
            mask = np.any(_to_rgb_uint8(oriented, label) != 0, axis=2)
        return np.ascontiguousarray(mask, dtype=bool)


def read_image_info(path: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None) -> dict:
    """Width, height, mode and format from the header only (no pixel decode).

    width/height are those load_image returns, i.e. after EXIF orientation. Any size is reported
    (no pixel limit); unreadable files raise ImageLoadError.
    """
    label = _source_label(path, name)
    with _opened(path, label, None) as (image, _stream):
        width, height = image.size
        if _exif_orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        return {"width": int(width), "height": int(height), "mode": image.mode, "format": image.format}


def image_channels(path: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None) -> int:
    """How many channels a file holds as stored (1 for grayscale, 8- or 16-bit; 3 for RGB; 4 with alpha), from its
    header only; every image is decoded to RGB, so this is the one place the difference shows."""
    mode = read_image_info(path, name=name)["mode"]
    if mode == "P":  # a palette of colours
        return 3
    if mode in ("1", "L", "F") or mode.startswith("I"):  # bilevel, 8-bit, float and 16/32-bit grayscale
        return 1
    return Image.getmodebands(mode)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Entries directly in `folder` named like images (IMAGE_EXTENSIONS, any case), sorted by name; hidden and
    folders skipped.

    Entries that cannot be images — a dangling link, a link loop, a pipe named `x.png` — are listed too, so
    that reading them gives one error naming each, while the other files are still read.
    """
    directory = Path(folder)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: folder not found")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: not a folder")
    # os.scandir gives the entry type without an extra stat per file on most systems.
    with os.scandir(directory) as entries:
        names = [
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            and not _is_folder(entry)
        ]
    return [directory / file_name for file_name in sorted(names)]


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop: not a folder; reading it later gives its own error
        return False
