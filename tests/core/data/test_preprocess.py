"""Preprocessing geometry: masks follow their images exactly, maps go back onto the original exactly."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.data.preprocess import Preprocessing, map_to_original


def test_center_crop_geometry_of_a_square_image():
    geometry = Preprocessing().geometry(900, 900)
    assert (geometry.resized_height, geometry.resized_width) == (256, 256)
    assert (geometry.offset_y, geometry.offset_x) == (16, 16)
    assert (geometry.height, geometry.width) == (224, 224)


def test_center_crop_geometry_of_a_wide_image():
    geometry = Preprocessing().geometry(300, 600)
    assert (geometry.resized_height, geometry.resized_width) == (256, 512)
    assert (geometry.offset_y, geometry.offset_x) == (16, 144)


def test_mask_goes_through_the_same_transform_as_its_image():
    image = np.zeros((300, 500, 3), np.uint8)
    image[100:160, 200:260] = 255
    mask = image[:, :, 0] > 0
    for mode in ("center_crop", "full"):
        preprocessing = Preprocessing(mode)
        cropped, geometry = preprocessing.apply_geometry(image)
        transformed = preprocessing.transform_mask(mask, geometry)
        bright = cropped[:, :, 0] > 127
        assert transformed.shape == (224, 224)
        # Same square, up to the one-pixel difference between area and nearest interpolation at its edge.
        assert (bright ^ transformed).sum() <= 4 * bright.sum() ** 0.5 + 4


def test_mask_of_another_size_is_refused():
    preprocessing = Preprocessing()
    geometry = preprocessing.geometry(100, 100)
    with pytest.raises(ValueError, match="does not match its image"):
        preprocessing.transform_mask(np.zeros((90, 100), bool), geometry)


def test_map_back_to_the_original_is_the_exact_inverse_and_marks_the_uninspected_border():
    preprocessing = Preprocessing("center_crop", 256, 224)
    geometry = preprocessing.geometry(450, 900)  # scale 256/450, resized 256×512, offsets (16, 144)
    # A map whose value is its own working x coordinate: placed back, each original pixel must read the
    # working coordinate its centre maps to.
    working = np.tile(np.arange(224, dtype=np.float32), (224, 1))
    placed = map_to_original(working, geometry)
    assert placed.shape == (450, 900)
    x = np.arange(900)
    u = (x + 0.5) * geometry.scale_x - 0.5 - geometry.offset_x
    inside = (u >= 0) & (u <= 223)
    np.testing.assert_allclose(placed[225, inside], u[inside], atol=1e-3)
    assert np.isnan(placed[225, (u < -0.5) | (u > 223.5)]).all()
    assert np.isnan(placed[:, 0]).all() and np.isnan(placed[:, -1]).all()
    # Rows: the crop cuts 16 of 256 resized rows top and bottom → about 28 original rows each side.
    assert np.isnan(placed[:20, 450]).all() and np.isfinite(placed[40:410, 450]).all()


def test_full_frame_mode_inspects_every_pixel():
    geometry = Preprocessing("full").geometry(123, 377)
    placed = map_to_original(np.random.default_rng(0).random((224, 224)).astype(np.float32), geometry)
    assert placed.shape == (123, 377) and np.isfinite(placed).all()


def test_normalisation_belongs_to_the_weights():
    image = np.full((1, 4, 4, 3), 255, np.uint8)
    assert Preprocessing(normalization="inception").normalize(image).max().item() == pytest.approx(1.0)
    imagenet = Preprocessing(normalization="imagenet").normalize(np.zeros((1, 4, 4, 3), np.uint8))
    assert imagenet[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229)


@pytest.mark.parametrize("kwargs", [{"mode": "stretch"}, {"normalization": "other"}, {"resize": 200, "crop": 224}])
def test_invalid_preprocessing_is_refused(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


@pytest.mark.parametrize("intensity", ["standardize", "robust"])
def test_standardized_intensity_ignores_a_global_brightness_and_contrast_change(intensity):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (240, 240, 3)).clip(0, 255).astype(np.uint8)
    brighter = np.clip(image.astype(np.float32) * 1.3 + 40, 0, 255).astype(np.uint8)
    adjust = Preprocessing(intensity=intensity).apply_geometry
    first, second = adjust(image)[0].astype(int), adjust(brighter)[0].astype(int)
    # Quartiles of 8-bit grey levels are whole numbers: the robust spread is a little coarser.
    assert np.abs(first - second).mean() < (1.5 if intensity == "standardize" else 3.0)
    # A defect-free image comes out at the same mean and spread either way.
    assert abs(first.mean() - 128) < 2 and abs(first.std() - 48) < 2
    plain, _ = Preprocessing().apply_geometry(brighter)
    assert abs(plain.mean() - first.mean()) > 20  # without it, the shift stays


def test_robust_standardization_keeps_the_rest_of_a_part_with_a_large_defect_where_it_was():
    """A dark defect shifts the image's mean and widens its spread: plain standardisation moves the good surface
    around it (brighter, flatter). The median and the interquartile range move far less."""
    rng = np.random.default_rng(2)
    surface = rng.normal(110, 15, (240, 240, 3)).clip(0, 255).astype(np.uint8)

    def moved(intensity: str, band_rows: int) -> float:
        """Mean grey-level change of the good surface below a dark band, before and after the band appeared."""
        defective = surface.copy()
        defective[:band_rows] = 10
        adjust = Preprocessing(intensity=intensity, mode="full").apply_geometry
        rows = slice(band_rows * 224 // 240 + 1, None)  # below the band, at working size
        return float(np.abs(adjust(surface)[0][rows].astype(int) - adjust(defective)[0][rows].astype(int)).mean())

    # A band over 5 % of the image: plain standardisation shifts the rest by more than 15 grey levels.
    assert moved("robust", 12) < 3 < 15 < moved("standardize", 12)
    # Over 20 %: the quartiles begin to shift too, but by less than half as much.
    assert moved("robust", 48) < 0.5 * moved("standardize", 48)
