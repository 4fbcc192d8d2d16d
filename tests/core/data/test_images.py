"""Tests for inspection.images: every mode, format, size and failure, with real files."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from inspection.data import images
from inspection.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    list_images,
    load_image,
    load_mask,
    max_pixels,
    read_image_info,
)
from inspection.errors import ImageLoadError

SIXTEEN_BIT = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = np.array([[0, 4, 128, 255]], dtype=np.uint8)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    """Pillow must neither warn (bomb, palette transparency) nor leak files in any test here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _colour_image(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk (after IHDR) into PNG bytes written by any encoder."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    tiff_block = exif.tobytes()[len(b"Exif\x00\x00") :]
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return png[:ihdr_end] + _png_chunk(b"eXIf", tiff_block) + png[ihdr_end:]


# --------------------------------------------------------------------------- modes


def test_rgb_png_is_exact(tmp_path: Path) -> None:
    pixels = _colour_image()
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    _assert_rgb(loaded, 20, 30)
    np.testing.assert_array_equal(loaded, pixels)


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = _colour_image()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    _assert_rgb(loaded, 20, 30)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_gray_alpha_drops_alpha(tmp_path: Path) -> None:
    gray = _colour_image()[..., 0]
    alpha = np.full_like(gray, 7)
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    loaded = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(loaded, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_drops_alpha_like_convert_rgb(tmp_path: Path) -> None:
    rgba = np.dstack([_colour_image(), np.zeros((20, 30), dtype=np.uint8)])  # fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(loaded, rgba[..., :3])


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_with_and_without_transparency(tmp_path: Path, transparency: int | None) -> None:
    palette_image = Image.fromarray(_colour_image()).quantize(colors=16)
    expected = np.asarray(palette_image.convert("RGB"))
    kwargs = {} if transparency is None else {"transparency": transparency}
    palette_image.save(tmp_path / "p.png", **kwargs)
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
        assert ("transparency" in check.info) == (transparency is not None)
    loaded = load_image(tmp_path / "p.png")
    _assert_rgb(loaded, 20, 30)
    np.testing.assert_array_equal(loaded, expected)


def test_bilevel_becomes_black_and_white(tmp_path: Path) -> None:
    bits = np.zeros((5, 9), dtype=bool)
    bits[1:3, 2:7] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as check:
        assert check.mode == "1"
    loaded = load_image(tmp_path / "bits.png")
    np.testing.assert_array_equal(loaded[..., 1], np.where(bits, 255, 0))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (12, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    loaded = load_image(tmp_path / "cmyk.jpg")
    _assert_rgb(loaded, 8, 12)
    assert np.all(np.abs(loaded.astype(int) - [255, 0, 0]) <= 3)


def _save_sixteen_bit_gray(path: Path, mode: str) -> None:
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (4, 1), SIXTEEN_BIT.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(SIXTEEN_BIT.astype(np.int32))
    else:
        image = Image.fromarray(SIXTEEN_BIT)
    image.save(path)


@pytest.mark.parametrize(
    ("file_name", "mode", "expected_mode"),
    [("g16.png", "I;16", "I;16"), ("g16.tif", "I;16", "I;16"), ("g16b.tif", "I;16B", "I;16B"), ("g32.tif", "I", "I")],
)
def test_sixteen_bit_gray_is_rescaled_not_clipped(
    tmp_path: Path, file_name: str, mode: str, expected_mode: str
) -> None:
    path = tmp_path / file_name
    _save_sixteen_bit_gray(path, mode)
    with Image.open(path) as check:
        assert check.mode == expected_mode
    loaded = load_image(path)
    _assert_rgb(loaded, 1, 4)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], SIXTEEN_BIT_AS_8)


def test_sixteen_bit_rgb_png_falls_back_to_opencv(tmp_path: Path) -> None:
    rgb = np.array([[[65535, 1000, 32768], [0, 65535, 1000]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    loaded = load_image(tmp_path / "rgb16.png")
    _assert_rgb(loaded, 1, 2)
    np.testing.assert_array_equal(loaded, [[[255, 4, 128], [0, 255, 4]]])


def test_sixteen_bit_rgba_png_drops_alpha(tmp_path: Path) -> None:
    bgra = np.array([[[32768, 1000, 65535, 0]]], dtype=np.uint16)  # B, G, R, A
    cv2.imwrite(str(tmp_path / "rgba16.png"), bgra)
    np.testing.assert_array_equal(load_image(tmp_path / "rgba16.png"), [[[255, 4, 128]]])


def test_sixteen_bit_rgb_tiff_is_rescaled(tmp_path: Path) -> None:
    rgb = np.array([[[65535, 1000, 32768]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.tif"), rgb[..., ::-1])
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.tif"), [[[255, 4, 128]]])


def test_float_tiff_unit_range_and_min_max(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "unit.tif")[..., 0], [[0, 128, 255]])
    Image.fromarray(np.array([[-10.0, 0.0, 30.0]], dtype=np.float32)).save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "wide.tif") as check:
        assert check.mode == "F"
    np.testing.assert_array_equal(load_image(tmp_path / "wide.tif")[..., 2], [[0, 64, 255]])


# --------------------------------------------------------------------------- orientation


def test_exif_orientation_6_rotates_jpeg(tmp_path: Path) -> None:
    stored = np.full((20, 40, 3), 128, dtype=np.uint8)  # 40 wide, 20 tall
    stored[:10, :20] = (255, 0, 0)  # red top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "phone.jpg")
    _assert_rgb(loaded, 40, 20)
    # Clockwise rotation moves the stored top-left corner to the top-right.
    assert np.all(np.abs(loaded[2, -3].astype(int) - [255, 0, 0]) <= 12)
    assert np.all(np.abs(loaded[2, 2].astype(int) - 128) <= 12)
    assert read_image_info(tmp_path / "phone.jpg")["width"] == 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_opencv_fallback_applies_orientation_like_pillow(tmp_path: Path, orientation: int) -> None:
    pixels = _colour_image(3, 5, seed=orientation)
    eight_bit = io.BytesIO()
    Image.fromarray(pixels).save(eight_bit, format="PNG")
    wide = cv2.imencode(".png", (pixels[..., ::-1].astype(np.uint16) * 257))[1].tobytes()
    via_pillow = load_image(_with_exif_orientation(eight_bit.getvalue(), orientation))
    via_opencv = load_image(_with_exif_orientation(wide, orientation))
    np.testing.assert_array_equal(via_opencv, via_pillow)
    assert via_opencv.flags["C_CONTIGUOUS"]


# --------------------------------------------------------------------------- formats and sources


@pytest.mark.parametrize("extension", [".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".PNG"])
def test_formats_round_trip(tmp_path: Path, extension: str) -> None:
    pixels = np.zeros((16, 24, 3), dtype=np.uint8)
    pixels[:, 12:] = (40, 200, 90)
    path = tmp_path / f"image{extension}"
    Image.fromarray(pixels).save(path, format=None if extension != ".PNG" else "PNG")
    loaded = load_image(path)
    _assert_rgb(loaded, 16, 24)
    if extension in (".jpg", ".jpeg"):  # lossy: compare away from the colour edge
        away_from_edge = np.r_[0:6, 18:24]
        assert np.abs(loaded[:, away_from_edge].astype(int) - pixels[:, away_from_edge]).max() <= 8
    else:
        np.testing.assert_array_equal(loaded, pixels)


def test_bytes_stream_and_open_file_give_the_same_pixels(tmp_path: Path) -> None:
    pixels = _colour_image()
    Image.fromarray(pixels).save(tmp_path / "upload.png")
    data = (tmp_path / "upload.png").read_bytes()
    np.testing.assert_array_equal(load_image(data), pixels)
    np.testing.assert_array_equal(load_image(io.BytesIO(data), name="upload.png"), pixels)
    with open(tmp_path / "upload.png", "rb") as handle:
        np.testing.assert_array_equal(load_image(handle), pixels)
    assert load_image(str(tmp_path / "upload.png")).shape == (20, 30, 3)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 7), (7, 3), (1, 500), (1200, 1700)])
def test_any_size(tmp_path: Path, height: int, width: int) -> None:
    pixels = (np.arange(height * width, dtype=np.uint32) % 251).astype(np.uint8).reshape(height, width)
    Image.fromarray(pixels, mode="L").save(tmp_path / "sized.png", compress_level=1)
    loaded = load_image(tmp_path / "sized.png")
    _assert_rgb(loaded, height, width)
    np.testing.assert_array_equal(loaded[..., 0], pixels)


# --------------------------------------------------------------------------- failures


def _error_for(source, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **kwargs)
    return str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    message = _error_for(tmp_path / "nowhere.png")
    assert "nowhere.png" in message and "not found" in message


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    message = _error_for(tmp_path / "folder.png")
    assert "folder.png" in message and "directory" in message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    message = _error_for(tmp_path / "empty.jpg")
    assert "empty.jpg" in message and "empty" in message
    assert "upload.png: empty" in _error_for(b"", name="upload.png")


def test_text_file_renamed_png(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_text("this is not an image\n")
    message = _error_for(tmp_path / "bad.png")
    assert message == f"{tmp_path / 'bad.png'}: not an image file or unsupported format"
    assert _error_for(b"plain text", name="bad.png") == "bad.png: not an image file or unsupported format"


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_truncated_files_are_refused(tmp_path: Path, extension: str) -> None:
    whole = tmp_path / f"whole{extension}"
    Image.fromarray(_colour_image(64, 80)).save(whole)
    data = whole.read_bytes()
    (tmp_path / f"cut{extension}").write_bytes(data[: len(data) // 2])
    message = _error_for(tmp_path / f"cut{extension}")
    assert f"cut{extension}" in message and "truncated" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_sixteen_bit_png_is_refused(tmp_path: Path) -> None:
    data = cv2.imencode(".png", np.full((32, 32, 3), 999, dtype=np.uint16))[1].tobytes()
    message = _error_for(data[: len(data) // 2], name="cut16.png")
    assert message.startswith("cut16.png: ") and "truncated" in message


def test_too_many_pixels_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(_colour_image(20, 30)).save(tmp_path / "big.png")

    def decode_forbidden(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode_forbidden)
    message = _error_for(tmp_path / "big.png", max_pixels=599)
    assert "big.png" in message and "too large" in message and "20" in message and "30" in message


def test_huge_header_is_refused_without_pillow_warning(tmp_path: Path) -> None:
    # A 20000×20000 bilevel PNG is ~50 kB on disk but 400 megapixels.
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 200_000
    started = time.perf_counter()
    message = _error_for(tmp_path / "huge.png")  # warnings are errors in this module
    assert time.perf_counter() - started < 1.0
    assert "huge.png" in message and "400,000,000" in message
    assert read_image_info(tmp_path / "huge.png") == {"width": 20000, "height": 20000, "mode": "1", "format": "PNG"}


def test_pillow_limit_is_bypassed_and_restored(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(_colour_image(20, 30)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse 600 pixels
    assert load_image(tmp_path / "small.png").shape == (20, 30, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_max_pixels_setting(monkeypatch) -> None:
    monkeypatch.delenv("INSPECTION_MAX_PIXELS", raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == 100_000_000
    monkeypatch.setenv("INSPECTION_MAX_PIXELS", "500")
    assert max_pixels() == 500
    data = io.BytesIO()
    Image.fromarray(_colour_image(20, 30)).save(data, format="PNG")
    assert "too large" in _error_for(data.getvalue(), name="env.png")
    assert load_image(data.getvalue(), max_pixels=600).shape == (20, 30, 3)
    monkeypatch.setenv("INSPECTION_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="INSPECTION_MAX_PIXELS"):
        max_pixels()
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(data.getvalue(), max_pixels=0)


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError, match="int"):
        load_image(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- masks, info, listing


def test_load_mask_any_nonzero_is_defect(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2:4, 3:6] = 255
    mask[0, 0] = 1  # a faint but nonzero pixel still counts
    Image.fromarray(mask).save(tmp_path / "m_mask.png")
    loaded = load_mask(tmp_path / "m_mask.png")
    assert loaded.dtype == bool and loaded.shape == (6, 8)
    np.testing.assert_array_equal(loaded, mask > 0)

    Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(tmp_path / "rgb_mask.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "rgb_mask.png"), mask > 0)

    Image.fromarray(mask.astype(np.uint16)).save(tmp_path / "wide_mask.png")  # value 1 must survive
    np.testing.assert_array_equal(load_mask(tmp_path / "wide_mask.png"), mask > 0)

    Image.fromarray(mask > 0).save(tmp_path / "bits_mask.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "bits_mask.png"), mask > 0)


def test_load_mask_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match="broken_mask.png"):
        load_mask(tmp_path / "broken_mask.png")
    with pytest.raises(ImageLoadError, match="missing_mask.png: file not found"):
        load_mask(tmp_path / "missing_mask.png")


def test_read_image_info_reads_the_header_only(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(_colour_image(20, 30)).save(tmp_path / "a.jpg")
    Image.new("I;16", (7, 3)).save(tmp_path / "b.tif")

    def decode_forbidden(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode_forbidden)
    assert read_image_info(tmp_path / "a.jpg") == {"width": 30, "height": 20, "mode": "RGB", "format": "JPEG"}
    assert read_image_info(tmp_path / "b.tif") == {"width": 7, "height": 3, "mode": "I;16", "format": "TIFF"}
    with pytest.raises(ImageLoadError, match="c.png"):
        read_image_info(tmp_path / "c.png")


def test_list_images_filters_sorts_and_skips_hidden(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.JPEG", "d.bmp", "e.tif", "f.TIFF", ".hidden.png", "notes.txt", "g.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub.png" / "nested.png").write_bytes(b"x")
    listed = list_images(tmp_path)
    assert [path.name for path in listed] == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp", "e.tif", "f.TIFF"]
    assert all(path.parent == tmp_path for path in listed)
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)
    with pytest.raises(FileNotFoundError, match="absent"):
        list_images(tmp_path / "absent")


def test_module_leaves_pillow_globals_alone() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS is not None
    assert images.DEFAULT_MAX_PIXELS == 100_000_000


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("RGB", ".png"), ("RGB", ".jpg"), ("I;16", ".png"),
                                          ("RGBA", ".png")])
def test_a_large_image_is_read_shrunk_to_max_side_keeping_its_orientation(tmp_path, mode, suffix):
    width, height = 5000, 3000
    array = np.zeros((height, width), np.uint16 if mode == "I;16" else np.uint8)
    array[:100, :] = 65535 if mode == "I;16" else 255  # a bright band along the top edge
    image = Image.fromarray(array)
    image = image if mode in ("L", "I;16") else image.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    path = tmp_path / f"large{suffix}"
    image.save(path, exif=exif) if mode != "I;16" else image.save(path)
    loaded = load_image(path, max_side=1000)
    rotated = mode != "I;16"
    assert loaded.shape == ((1000, 600, 3) if rotated else (600, 1000, 3))
    band = loaded[:, -15:] if rotated else loaded[:15, :]  # the top band ends up on the right after rotation
    assert band.mean() > 200 and loaded[loaded.shape[0] // 2, loaded.shape[1] // 2].max() < 30
    assert load_image(path).shape[:2] == ((width, height) if rotated else (height, width))
