"""Pictures of results: heatmap overlays on the original image, defect boxes, one colour scale everywhere.

Maps are shown on the model's normalised scale (0 = calm good surface, 0.5 = the saved threshold). The colour
scale has two halves: 0 … 0.5 (below the threshold) runs from blue to green, 0.5 … the model's colour maximum
(a high score of its defects) from yellow to red — so the threshold is the same colour on every heatmap of
every model, and scores far above it stay distinguishable instead of all turning one dark red. Pixels the
model never saw (outside the crop) are drawn greyed and hatched: "not inspected".
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib import colormaps

from ..data.preprocess import Geometry
from ..scores.regions import Region

COLORMAP = "jet"
SCALE_MIN, THRESHOLD, SCALE_MAX = 0.0, 0.5, 1.0  # normalised maps; SCALE_MAX is the default colour maximum
# Good and defect in every chart (the app's Plotly figures and the HTML report's SVG).
GOOD_COLOR, DEFECT_COLOR = "#2b8a3e", "#c92a2a"


def colour_position(values: np.ndarray, vmax: float = SCALE_MAX) -> np.ndarray:
    """Where normalised scores fall on the colour bar, in [0, 1]: 0 … 0.5 → the lower half, 0.5 … vmax → the upper."""
    values = np.asarray(values, dtype=np.float32)
    upper = max(float(vmax), THRESHOLD + 1e-6)
    # One float temporary, reused in place: a 4096² map costs 64 MB here, not several times that.
    position = np.subtract(values, THRESHOLD, dtype=np.float32)
    above = position > 0
    np.multiply(position, 0.5 / (upper - THRESHOLD), out=position, where=above)
    np.multiply(position, 0.5 / (THRESHOLD - SCALE_MIN), out=position, where=~above)
    position += 0.5
    np.clip(position, 0.0, 1.0, out=position)
    return position


def colorize(anomaly_map: np.ndarray, vmax: float = SCALE_MAX, colormap: str = COLORMAP) -> np.ndarray:
    """H×W float map → H×W×3 uint8 RGB on the two-half scale up to `vmax`; NaN (not inspected) becomes mid grey."""
    return _coloured(colour_position(anomaly_map, vmax), colormap)


def _coloured(unit: np.ndarray, colormap: str) -> np.ndarray:
    """Positions in [0, 1] (NaN: not inspected) → RGB uint8 through the colour map; NaN becomes mid grey.
    `unit` is a temporary of the caller's and is scaled in place (a 4096² map: no second float copy)."""
    unit *= 255.0
    not_inspected = np.isnan(unit)
    unit[not_inspected] = 0.0
    lookup = (colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    rgb = lookup[unit.astype(np.uint8)]
    rgb[not_inspected] = 128
    return rgb


def overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.45, vmax: float = SCALE_MAX) -> np.ndarray:
    """Heatmap blended over an RGB image of the same size; not-inspected pixels dimmed and hatched."""
    return _blend(image, anomaly_map, colorize(anomaly_map, vmax), alpha)


def overlay_range(image: np.ndarray, values: np.ndarray, low: float, high: float, alpha: float = 0.45) -> np.ndarray:
    """A map of other values than the model's scores (plain linear colours from `low` to `high`, e.g. an
    explanation in [0, 1]) blended over an RGB image of the same size, drawn like `overlay` otherwise."""
    return _blend(image, values, colorize_range(values, low, high), alpha)


def _blend(image: np.ndarray, values: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """`colours` (the map `values` coloured) over the image; where `values` is NaN, the image dimmed and hatched."""
    if image.shape[:2] != values.shape:
        raise ValueError(f"map of shape {values.shape} does not match image of shape {image.shape[:2]}")
    blended = cv2.addWeighted(np.ascontiguousarray(image), 1 - alpha, colours, alpha, 0)
    outside = np.isnan(values)
    if outside.any():
        rows, cols = np.nonzero(outside)
        hatch = ((rows + cols) // 6) % 2 == 0
        dimmed = 0.35 * image[rows, cols].astype(np.float32) + 0.65 * 110
        dimmed[hatch] *= 0.8
        blended[rows, cols] = np.clip(dimmed, 0, 255).astype(np.uint8)
    return blended


def box_to_original(region: Region, geometry: Geometry) -> tuple[int, int, int, int]:
    """A working-resolution box (x0, y0, x1, y1 exclusive) in original-image pixel coordinates."""
    x0 = (region.x0 + geometry.offset_x) / geometry.scale_x
    x1 = (region.x1 + geometry.offset_x) / geometry.scale_x
    y0 = (region.y0 + geometry.offset_y) / geometry.scale_y
    y1 = (region.y1 + geometry.offset_y) / geometry.scale_y
    return (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
            min(geometry.original_width, int(np.ceil(x1))), min(geometry.original_height, int(np.ceil(y1))))


def draw_boxes(image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], labels: Sequence[str] = (),
               color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Rectangles (and optional labels) drawn on a copy of an RGB image; line width follows image size."""
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(1, round(max(image.shape[:2]) / 300))
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (0, 0, 0), thickness + 2)
        cv2.rectangle(canvas, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, thickness)
        if index < len(labels):
            # Labels stay readable where the picture is shown small (Compare's columns): 4-6 % of its longer side.
            scale = max(0.7, max(image.shape[:2]) / 600)
            (text_w, text_h), _ = cv2.getTextSize(labels[index], cv2.FONT_HERSHEY_SIMPLEX, scale, thickness + 2)
            if y0 - 4 - text_h >= 0:  # above the box
                origin = (x0, y0 - 4)
            else:  # no room above (a box at the top edge): inside it, clear of its border
                origin = (x0 + thickness + 3, y0 + thickness + 3 + text_h)
            origin = (max(0, min(origin[0], canvas.shape[1] - text_w)), origin[1])  # never cut off at the right
            cv2.putText(canvas, labels[index], origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2)
            cv2.putText(canvas, labels[index], origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness)
    return canvas


def mask_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0),
                 alpha: float = 0.5) -> np.ndarray:
    """A binary mask tinted over an RGB image, with its outline drawn."""
    canvas = image.astype(np.float32).copy()
    canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.array(color, np.float32)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, max(1, round(max(image.shape[:2]) / 400)))
    return canvas


def colorbar(height: int = 256, width: int = 24, vmax: float = SCALE_MAX) -> np.ndarray:
    """A vertical colour bar of the scale up to `vmax` (top), as an RGB image; the threshold sits in the middle."""
    column = np.concatenate([np.linspace(vmax, THRESHOLD, height // 2, dtype=np.float32),
                             np.linspace(THRESHOLD, SCALE_MIN, height - height // 2, dtype=np.float32)])[:, None]
    return colorize(np.repeat(column, width, axis=1), vmax)


def colorize_range(values: np.ndarray, low: float, high: float, colormap: str = COLORMAP) -> np.ndarray:
    """H×W float map → H×W×3 uint8 RGB on a plain linear scale from `low` to `high` (a method's own values, not
    the model's normalised scores: no threshold in the middle); NaN becomes mid grey."""
    values = np.asarray(values, dtype=np.float32)
    span = float(high) - float(low)
    return _coloured(np.clip((values - float(low)) / (span if span > 0 else 1.0), 0.0, 1.0), colormap)
