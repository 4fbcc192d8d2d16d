"""What a model cannot judge: an image side with fewer pixels than the model's coarsest feature grid has cells, or a
shape so long and thin that its shorter side falls below that once it is shrunk to the size large images are scored
at — refused in one line naming the limit; and maps of long thin images placed back onto the original (cv2.remap
stops at 32767 px a side)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspection.data.preprocess import DISPLAY_MAX_SIDE, Preprocessing, map_to_original
from inspection.errors import ImageLoadError, ImageSizeError, friendly_error, is_user_error


def test_the_smallest_side_is_one_pixel_per_cell_of_the_coarsest_features() -> None:
    # PatchCore's and PaDiM's defaults: the shorter side becomes 256 px, the deepest stride is 16 → 16 cells.
    assert Preprocessing("aspect", 256, 224, multiple=16).min_side == 16
    assert Preprocessing("center_crop", 256, 224, multiple=16).min_side == 16
    assert Preprocessing("tiles", 256, 224, multiple=16).min_side == 16
    # Full mode scales each side to the crop; a working side not divisible by the stride rounds up.
    assert Preprocessing("full", 256, 224, multiple=32).min_side == 7
    assert Preprocessing("center_crop", 73, 64, multiple=32).min_side == 3
    assert Preprocessing("full", 256, 16, multiple=32).min_side == 1


@pytest.mark.parametrize(("height", "width"), [(16, 16), (16, DISPLAY_MAX_SIDE), (DISPLAY_MAX_SIDE, 16), (300, 200),
                                               (9999, 9999), (40, 10000), (10000, 40)])
def test_images_the_model_can_judge_pass(height: int, width: int) -> None:
    Preprocessing("aspect", 256, 224, multiple=16).check_inspectable(height, width)


def test_an_image_too_small_is_refused_in_one_line_that_states_the_limit() -> None:
    preprocessing = Preprocessing("aspect", 256, 224, multiple=16)
    for height, width in [(1, 1), (15, 300), (300, 15), (0, 5)]:
        with pytest.raises(ImageSizeError) as caught:
            preprocessing.check_inspectable(height, width, name="part.png")
        message = friendly_error(caught.value)
        assert message.startswith(f"This model cannot judge this image: part.png: image is {width} × {height} px; "
                                  "this model needs at least 16 px on each side (it works at 256 px on the shorter "
                                  "side, with its coarsest features 16 px apart"), message
        assert "\n" not in message and is_user_error(caught.value)
        assert isinstance(caught.value, ImageLoadError)  # where unreadable files are caught, these are too


@pytest.mark.parametrize(("height", "width"), [(10000, 20), (20, 10000), (16, DISPLAY_MAX_SIDE + 1)])
def test_a_shape_too_long_and_thin_is_refused_with_the_largest_ratio(height: int, width: int) -> None:
    """Shrunk to the size large images are scored at (4096 px), 20 × 10000 px would be 8 px wide: below 16."""
    with pytest.raises(ImageSizeError, match=rf"image is {width} × {height} px \([\d.]+:1\); this model needs at least "
                                             r"16 px on each side once the longer side is shrunk to 4096 px.*"
                                             r"sides of at most 256:1"):
        Preprocessing("aspect", 256, 224, multiple=16).check_inspectable(height, width)


def test_the_rule_gives_a_file_and_its_copy_shrunk_for_scoring_the_same_verdict() -> None:
    preprocessing = Preprocessing("aspect", 96, 96, multiple=16)  # at least 6 px
    for short in range(1, 40):
        long = 10_000
        shrunk = max(1, round(short * DISPLAY_MAX_SIDE / long))  # as load_image(max_side=4096) shrinks it
        try:
            preprocessing.check_inspectable(short, long)
            file_passes = True
        except ImageSizeError:
            file_passes = False
        if file_passes:  # what the file passes, its shrunk copy passes too (the converse may differ by rounding)
            preprocessing.check_inspectable(shrunk, DISPLAY_MAX_SIDE)


def test_every_image_a_model_sees_goes_through_the_rule() -> None:
    preprocessing = Preprocessing("center_crop", 256, 224, multiple=16)
    with pytest.raises(ImageSizeError, match="image is 1 × 1 px"):
        preprocessing.apply_geometry(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageSizeError, match="^a.png: image is 3 × 2 px"):
        preprocessing.apply_geometry(np.zeros((2, 3, 3), np.uint8), name="a.png")
    working, _ = preprocessing.apply_geometry(np.zeros((16, 20, 3), np.uint8))
    assert working.shape == (224, 224, 3)


def test_the_map_of_a_long_thin_image_goes_back_onto_it() -> None:
    """8 × 4096 px at a shorter side of 96 (aspect mode) is a 96 × 49152 working map: past cv2.remap's limit."""
    preprocessing = Preprocessing("aspect", 96, 96, multiple=16)
    for height, width in [(8, DISPLAY_MAX_SIDE), (DISPLAY_MAX_SIDE, 8)]:
        geometry = preprocessing.geometry(height, width)
        assert max(geometry.resized_height, geometry.resized_width) > 32767
        # A map whose value is its own working coordinate along the long side: bilinear sampling is exact on it.
        along = np.arange(max(geometry.height, geometry.width), dtype=np.float32)
        working = (np.tile(along, (geometry.height, 1)) if width > height
                   else np.tile(along[:, None], (1, geometry.width)))
        placed = map_to_original(working, geometry)
        assert placed.shape == (height, width) and np.isfinite(placed).all()
        scale = max(geometry.resized_height, geometry.resized_width) / max(height, width)
        expected = np.clip((np.arange(max(height, width)) + 0.5) * scale - 0.5, 0, None)
        got = placed[0] if width > height else placed[:, 0]
        np.testing.assert_allclose(got, expected, atol=0.05)


def test_a_destination_past_the_remap_limit_and_the_usual_sizes_are_placed_as_before() -> None:
    # Full mode: a 64 × 64 map back onto a 20 × 40000 px image (the app scores files at their own size).
    geometry = Preprocessing("full", 64, 64, multiple=16).geometry(20, 40_000)
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    placed = map_to_original(ramp, geometry)
    expected = np.clip((np.arange(40_000) + 0.5) * (64 / 40_000) - 0.5, 0, 63)
    np.testing.assert_allclose(placed[10], expected, atol=0.05)
    # A usual size: one remap of the whole map, exactly as before.
    geometry = Preprocessing("center_crop", 256, 224).geometry(450, 900)
    working = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    u = ((np.arange(900) + 0.5) * geometry.scale_x - 0.5 - geometry.offset_x).astype(np.float32)
    v = ((np.arange(450) + 0.5) * geometry.scale_y - 0.5 - geometry.offset_y).astype(np.float32)
    direct = cv2.remap(working, np.ascontiguousarray(np.broadcast_to(u[None, :], (450, 900))),
                       np.ascontiguousarray(np.broadcast_to(v[:, None], (450, 900))), interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    placed = map_to_original(working, geometry)
    inside = np.isfinite(placed)
    assert inside.sum() > 0.3 * inside.size  # the centre crop's part of a 1:2 image
    np.testing.assert_array_equal(placed[inside], direct[inside])
