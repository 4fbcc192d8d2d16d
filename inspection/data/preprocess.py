"""Preprocessing saved with every model: geometry (resize/crop) and the normalisation of the weights.

Every geometric step is an axis-aligned scale plus shift, recorded per image as a `Geometry`, so that
ground-truth masks go through exactly the same transform as the image (for metrics at the working
resolution) and anomaly maps can be placed back onto the original image exactly (for display), with
the border a crop never saw marked as not inspected (NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import ImageSizeError

if TYPE_CHECKING:  # torch is imported where a tensor is made: the torch-free runtime reads this module too
    import torch

#: Input normalisations by name: (mean, std) applied to RGB in [0, 1]. Each set of backbone weights names
#: the one it was trained with.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # scales to [-1, 1], as TF/TF-Lite weights expect
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # RGB in [0, 1], for networks trained from scratch with sigmoid outputs
}

def normalization_tensors(name: str, device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, std) of normalisation `name` as [1, 3, 1, 1] tensors (float32 unless `dtype`): normalised =
    (rgb01 − mean) / std."""
    import torch

    dtype = dtype or torch.float32

    mean, std = NORMALIZATIONS[name]
    return (torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1),
            torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1))


#: "center_crop": resize the shorter side to `resize`, then cut the centre `crop`×`crop` (the field's default).
#: "full": resize the whole frame to `crop`×`crop` (aspect ratio not kept, nothing cut off: for parts that
#: fill the frame and defects near the edges, e.g. Magnetic-Tile).
#: "aspect": resize the shorter side to `resize`, the longer one follows the image (aspect kept, nothing cut
#: off); the bottom and right are padded (edge pixels repeated) up to a multiple of the backbone's stride, and
#: the padding is no part of the map (NaN) or of any score.
#: "tiles": resize the shorter side to `resize` (aspect kept), then score overlapping `crop`×`crop` tiles
#: (`tile_overlap` pixels shared by neighbours) and stitch their maps into one map of the whole image.
RESIZE_MODES = ("center_crop", "full", "aspect", "tiles")

#: Modes whose working size follows each image (maps of one prediction may differ in size).
VARIABLE_SIZE_MODES = ("aspect", "tiles")

#: "none": pixel values as they are. "standardize": each image's brightness and contrast are set to a fixed
#: mean and spread (over the inspected area), for lines whose lighting drifts between captures; defects
#: are judged by their contrast with the rest of the part, not by the absolute grey level. "robust": the same
#: with the median and the interquartile range, which a defect's own pixels move far less: a large dark or
#: bright defect leaves the rest of its part nearer the grey levels of the good parts.
INTENSITY_MODES = ("none", "standardize", "robust")
_STANDARD_MEAN, _STANDARD_STD = 128.0, 48.0
_IQR_PER_STD = 1.349

#: Images are decoded for display and scoring at most this large (longer side, px): far above any model's working
#: resolution, and a 100 Mpx frame's heatmap then costs megabytes, not gigabytes. (Here, below the models, because
#: the smallest image a model judges is stated at this size: `Preprocessing.check_inspectable`.)
DISPLAY_MAX_SIDE = 4096

# cv2.remap needs every side of its source and destination below SHRT_MAX (32767).
_REMAP_MAX_SIDE = 32766


@dataclass(frozen=True)
class Geometry:
    """How one original image maps onto the working grid: u = scale_x * (x + 0.5) - 0.5 - offset_x.

    The resized frame (resized_height × resized_width) is the whole image at working scale; the working grid
    (height × width) is the part of it the model sees (a centre crop), or all of it plus padding (aspect mode).
    """

    original_height: int
    original_width: int
    resized_height: int
    resized_width: int
    offset_y: int
    offset_x: int
    height: int  # working size
    width: int

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.original_height

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.original_width

    @property
    def seen(self) -> tuple[int, int]:
        """Height and width of the working-grid window that holds image content (no padding)."""
        return (max(0, min(self.height, self.resized_height - self.offset_y)),
                max(0, min(self.width, self.resized_width - self.offset_x)))

    @property
    def inspected_fraction(self) -> float:
        """Share of the original image's area the model sees."""
        seen_height, seen_width = self.seen
        return seen_height * seen_width / (self.resized_height * self.resized_width)


@dataclass(frozen=True)
class Preprocessing:
    mode: str = "center_crop"
    resize: int = 256
    crop: int = 224
    normalization: str = "inception"
    intensity: str = "none"
    #: aspect mode: the working size is padded up to a multiple of this (the deepest stride the model uses).
    multiple: int = 32
    #: tiles mode: pixels shared by neighbouring tiles (at working scale).
    tile_overlap: int = 32

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity mode must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if not 16 <= self.crop <= 4096 or (self.mode in ("center_crop", "tiles") and self.resize < self.crop):
            raise ValueError(f"need 16 <= crop <= 4096 and resize >= crop, got resize={self.resize}, crop={self.crop}")
        if not 1 <= self.multiple <= 256 or self.tile_overlap < 0 or (self.mode == "tiles"
                                                                      and self.tile_overlap >= self.crop):
            raise ValueError(f"need 1 <= multiple <= 256 and 0 <= tile_overlap < crop, got multiple={self.multiple}, "
                             f"tile_overlap={self.tile_overlap}")

    @property
    def sees_whole_image(self) -> bool:
        """Whether every pixel of an image is inspected (only a centre crop leaves a border out)."""
        return self.mode != "center_crop"

    @property
    def size(self) -> tuple[int, int]:
        """The working size of modes with a fixed one (in aspect and tiles modes: the model's tile/short side)."""
        return self.crop, self.crop

    @property
    def working_side(self) -> int:
        """The side an image side is scaled to: its shorter side to `resize`, or (full mode) each side to `crop`."""
        return self.crop if self.mode == "full" else self.resize

    @property
    def min_side(self) -> int:
        """The smallest image side (px) the model judges: one pixel of the image per cell of its coarsest features."""
        # An image side becomes `working_side` px, cut by the deepest stride (`multiple`) into working_side / multiple
        # cells of the coarsest feature grid. A side with fewer pixels than that leaves cells with no pixel of the
        # image at all — the model would judge the interpolation of the resize, not the part.
        return max(1, -(-self.working_side // self.multiple))

    def check_inspectable(self, height: int, width: int, name: str | None = None) -> None:
        """Refuse, in one line (ImageSizeError), an image too small or too long and thin for the model to judge.

        The rule: each side at least `min_side` px once the longer side is at most DISPLAY_MAX_SIDE (the size large
        images are scored at), i.e. at least `min_side` px on each side and a shape of at most 1 : DISPLAY_MAX_SIDE /
        `min_side` — the same verdict for a file and for its copy shrunk for scoring.
        """
        need, short, long = self.min_side, min(height, width), max(height, width)
        if short >= need and short * DISPLAY_MAX_SIDE >= need * long:  # integers: no rounding at the limit
            return
        label = f"{name}: " if name else ""
        works = (f"it works at {self.crop} × {self.crop} px" if self.mode == "full"
                 else f"it works at {self.resize} px on the shorter side")
        why = f"{works}, with its coarsest features {self.multiple} px apart"
        if short < need:
            raise ImageSizeError(f"{label}image is {width} × {height} px; this model needs at least {need} px on each "
                                 f"side ({why}: a smaller side leaves some of them without a pixel of the image)")
        raise ImageSizeError(f"{label}image is {width} × {height} px ({long / short:.4g}:1); this model needs at "
                             f"least {need} px on each side once the longer side is shrunk to {DISPLAY_MAX_SIDE} px, "
                             f"the size large images are scored at: sides of at most {DISPLAY_MAX_SIDE / need:.4g}:1 "
                             f"({why})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**values)

    def geometry(self, height: int, width: int) -> Geometry:
        if self.mode == "full":
            return Geometry(height, width, self.crop, self.crop, 0, 0, self.crop, self.crop)
        if self.mode in VARIABLE_SIZE_MODES:
            scale = self.resize / min(height, width)
            resized_h, resized_w = max(1, round(height * scale)), max(1, round(width * scale))
            if self.mode == "tiles":  # the shorter side is at least one tile: tiles cover the frame, no padding
                resized_h, resized_w = max(resized_h, self.crop), max(resized_w, self.crop)
                return Geometry(height, width, resized_h, resized_w, 0, 0, resized_h, resized_w)
            pad = self.multiple
            return Geometry(height, width, resized_h, resized_w, 0, 0, -(-resized_h // pad) * pad,
                            -(-resized_w // pad) * pad)
        scale = self.resize / min(height, width)
        resized_h = max(self.crop, round(height * scale))
        resized_w = max(self.crop, round(width * scale))
        return Geometry(height, width, resized_h, resized_w,
                        (resized_h - self.crop) // 2, (resized_w - self.crop) // 2, self.crop, self.crop)

    def apply_geometry(self, image: np.ndarray, name: str | None = None) -> tuple[np.ndarray, Geometry]:
        """Resize and crop an H×W×C uint8 image to the working size (area interpolation when shrinking); an image the
        model cannot judge is refused (`check_inspectable`, its message naming `name`)."""
        self.check_inspectable(*image.shape[:2], name=name)
        geometry = self.geometry(*image.shape[:2])
        shrinking = geometry.resized_height * geometry.resized_width < image.shape[0] * image.shape[1]
        resized = cv2.resize(image, (geometry.resized_width, geometry.resized_height),
                             interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        working = self.adjust_intensity(_crop(resized, geometry))  # statistics over the content, not the padding
        pad_y, pad_x = geometry.height - working.shape[0], geometry.width - working.shape[1]
        if pad_y or pad_x:  # aspect mode: edge pixels repeated, so that padding adds no edge of its own
            working = cv2.copyMakeBorder(working, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        return working, geometry

    def adjust_intensity(self, image: np.ndarray) -> np.ndarray:
        """Apply the intensity mode to a working-size uint8 image."""
        if self.intensity == "none":
            return image
        values = image.astype(np.float32)
        if self.intensity == "robust":
            lower, centre, upper = np.percentile(values, (25, 50, 75))
            # The interquartile range of a normal distribution is 1.349 standard deviations: a defect-free
            # image comes out as it would under "standardize".
            centre, spread = float(centre), float(upper - lower) / _IQR_PER_STD
        else:
            centre, spread = float(values.mean()), float(values.std())
        standardized = (values - centre) * (_STANDARD_STD / max(spread, 1.0)) + _STANDARD_MEAN
        return np.clip(standardized, 0, 255).round().astype(np.uint8)

    def transform_mask(self, mask: np.ndarray, geometry: Geometry) -> np.ndarray:
        """A ground-truth mask through the same resize and crop as its image (nearest neighbour: stays binary)."""
        if mask.shape != (geometry.original_height, geometry.original_width):
            raise ValueError(f"mask of shape {mask.shape} does not match its image "
                             f"({geometry.original_height}×{geometry.original_width})")
        resized = cv2.resize(mask.astype(np.uint8), (geometry.resized_width, geometry.resized_height),
                             interpolation=cv2.INTER_NEAREST)
        return _crop(resized, geometry).astype(bool)

    def frame_mask(self, mask: np.ndarray, geometry: Geometry) -> np.ndarray:
        """A ground-truth mask on the resized frame (the whole image at working scale, nothing cut off)."""
        if mask.shape != (geometry.original_height, geometry.original_width):
            raise ValueError(f"mask of shape {mask.shape} does not match its image "
                             f"({geometry.original_height}×{geometry.original_width})")
        return cv2.resize(mask.astype(np.uint8), (geometry.resized_width, geometry.resized_height),
                          interpolation=cv2.INTER_NEAREST).astype(bool)

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        """uint8 N×H×W×3 → float32 N×3×H×W tensor with the weights' normalisation (`normalize_array`'s values)."""
        import torch

        return torch.from_numpy(self.normalize_array(images))

    def normalize_array(self, images: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×3 → float32 N×3×H×W array with the weights' normalisation: the one implementation, for the
        torch path and the exported runtime alike."""
        mean, std = (np.asarray(values, np.float32).reshape(1, 3, 1, 1) for values in NORMALIZATIONS[self.normalization])
        unit = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
        return (unit - mean) / std

    def batch(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[Geometry]]:
        """Preprocess decoded RGB images into one normalised batch tensor plus each image's geometry."""
        cropped, geometries = zip(*(self.apply_geometry(image) for image in images))
        return self.normalize(np.stack(cropped)), list(geometries)


def _crop(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    return image[geometry.offset_y: geometry.offset_y + geometry.height,
                 geometry.offset_x: geometry.offset_x + geometry.width]


def map_to_frame(anomaly_map: np.ndarray, geometry: Geometry, unseen: float = -np.inf) -> np.ndarray:
    """A working-resolution map on the resized frame: what the model never saw (outside a crop) is `unseen`
    (-inf: missed by every threshold), and padding is dropped."""
    frame = np.full((geometry.resized_height, geometry.resized_width), unseen, np.float32)
    seen_h, seen_w = geometry.seen
    frame[geometry.offset_y: geometry.offset_y + seen_h, geometry.offset_x: geometry.offset_x + seen_w] = \
        anomaly_map[:seen_h, :seen_w]
    return frame


def map_to_original(anomaly_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Place a working-resolution map back onto the original image grid (exact inverse of resize and crop).

    Pixels of the original that the crop never saw are NaN ("not inspected"). Bilinear sampling at the
    original pixel centres; no stretching of the cropped map over the whole original.
    """
    seen_h, seen_w = geometry.seen
    # Padding (aspect mode) is no part of the image: bilinear sampling must not reach into it.
    anomaly_map = np.ascontiguousarray(np.asarray(anomaly_map, dtype=np.float32)[:seen_h, :seen_w])
    # Working-grid coordinates of each original pixel centre, one axis at a time (the transform is separable).
    u = ((np.arange(geometry.original_width) + 0.5) * geometry.scale_x - 0.5 - geometry.offset_x).astype(np.float32)
    v = ((np.arange(geometry.original_height) + 0.5) * geometry.scale_y - 0.5 - geometry.offset_y).astype(np.float32)
    placed = np.empty((geometry.original_height, geometry.original_width), np.float32)
    # A long thin image's working map can pass cv2.remap's limit of 32767 px a side: remap it block by block, each
    # block with the source rows and columns its pixels read (one block, the whole map, for every usual size).
    for rows, (top, bottom) in _remap_blocks(v, seen_h):
        for cols, (left, right) in _remap_blocks(u, seen_w):
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            map_x = np.broadcast_to(u[cols][None, :] - np.float32(left), shape)
            map_y = np.broadcast_to(v[rows][:, None] - np.float32(top), shape)
            placed[rows, cols] = cv2.remap(anomaly_map[top:bottom, left:right], np.ascontiguousarray(map_x),
                                           np.ascontiguousarray(map_y), interpolation=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE)
    # A pixel is inspected when its centre falls inside the working grid's extent [-0.5, size - 0.5].
    outside_x = (u < -0.5) | (u > seen_w - 0.5)
    outside_y = (v < -0.5) | (v > seen_h - 0.5)
    placed[outside_y[:, None] | outside_x[None, :]] = np.nan
    return placed


def _remap_blocks(coords: np.ndarray, source_size: int) -> list[tuple[slice, tuple[int, int]]]:
    """Runs of destination pixels (ascending source `coords`) and the source span [start, stop) each run reads, both
    within cv2.remap's limit; a margin of a pixel each side, as cv2 rounds coordinates to 1/32 px."""
    first = np.clip(np.floor(coords).astype(np.int64) - 1, 0, max(source_size - 1, 0))
    last = np.clip(np.floor(coords).astype(np.int64) + 2, 0, max(source_size - 1, 0))  # the pixel after, inclusive
    blocks, start = [], 0
    while start < len(coords):  # a loop over blocks (one for every usual size), not over pixels
        source_start = int(first[start])
        stop = min(int(np.searchsorted(last, source_start + _REMAP_MAX_SIDE, side="left")),
                   start + _REMAP_MAX_SIDE, len(coords))
        stop = max(stop, start + 1)
        blocks.append((slice(start, stop), (source_start, int(last[stop - 1]) + 1)))
        start = stop
    return blocks
