"""Evaluation protocols: images as captured ("aligned"), or each one moved as a part placed by hand ("rotated").

The rotated protocol (the non-aligned protocol of Rd-MVTec) turns each image, train and test alike, by a random
angle in (−10°, +10°) about its centre and shifts it as a random 224×224 crop of the 256×256 frame would: with
the default preprocessing (shorter side 256, centre crop 224) the model sees exactly a random 224 crop of the
rotated 256 image. The move is one affine map applied to the decoded image at its own size (before the model's
preprocessing, which stays as saved), and the same map moves the ground-truth mask, so both stay aligned pixel
for pixel.

- Seeded per image: the angle and the crop come from the protocol's seed and the image's path inside its
  dataset, so every run, and fitting and evaluating alike, see the same moved images whatever their order.
- Corners: the image is filled by reflection about its border (what lies beyond a part's edge is most like its
  surroundings, and a constant fill would draw straight edges that patch features score); in the mask those
  pixels are 0 — they are not of the original image, so a defect reflected into them is not a defect.
- The shift is measured on the shorter side (16 of 256 px at most, either way); in `full` resize mode nothing
  is cropped afterwards, so up to 1/16 of the frame leaves the view on one side and is filled on the other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .images import load_image

PROTOCOLS = ("aligned", "rotated")
#: The rotated protocol's largest angle, in degrees either way.
MAX_ANGLE = 10.0
#: A random CROP×CROP window of a FRAME×FRAME image (sizes on the shorter side's scale).
FRAME, CROP = 256, 224
#: The image's fill beyond its border (cv2's reflection that does not repeat the edge pixel).
FILL = "reflect"


@dataclass(frozen=True)
class Placement:
    """How the protocol moves one image: turned by `angle` about its centre, then cut as the CROP window at
    (`crop_y`, `crop_x`) of the FRAME image would be (0 … FRAME − CROP; the centre crop is at the middle)."""

    angle: float  # degrees, counter-clockwise
    crop_y: int
    crop_x: int

    def matrix(self, height: int, width: int) -> np.ndarray:
        """The 2×3 affine map from source to moved pixel coordinates, for an image of this size."""
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, self.angle, 1.0)
        # The window's offset from the centred one, at the image's own scale (FRAME is the shorter side).
        scale = min(height, width) / FRAME
        middle = (FRAME - CROP) / 2.0
        matrix[0, 2] -= (self.crop_x - middle) * scale
        matrix[1, 2] -= (self.crop_y - middle) * scale
        return matrix

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """The moved H×W(×C) image, same size: bilinear, the corners filled by reflection."""
        height, width = image.shape[:2]
        return cv2.warpAffine(image, self.matrix(height, width), (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """The moved H×W bool mask: the same map as the image, nearest neighbour, 0 where the image was filled."""
        height, width = mask.shape[:2]
        moved = cv2.warpAffine(mask.astype(np.uint8), self.matrix(height, width), (width, height),
                               flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return moved.astype(bool)


@dataclass(frozen=True)
class PlacedImage:
    """An image file as a protocol shows it: what `fit` and `predict` decode instead of the file itself."""

    path: Path
    placement: Placement

    def load(self) -> np.ndarray:
        return self.placement.apply_image(load_image(self.path))


@dataclass(frozen=True)
class AlignmentProtocol:
    """Which protocol, and the seed of its random moves (recorded with models and results)."""

    name: str = "aligned"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.name!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"protocol seed must be an integer >= 0, got {self.seed!r}")

    @property
    def aligned(self) -> bool:
        return self.name == "aligned"

    def placement(self, key: str | os.PathLike) -> Placement | None:
        """The move of the image named `key` (its path inside the dataset); None under the aligned protocol."""
        if self.aligned:
            return None
        # A stable per-image stream: Python's hash() changes between processes, a digest does not.
        digest = int.from_bytes(hashlib.blake2b(Path(key).as_posix().encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng([self.seed, digest])
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        crop_y, crop_x = (int(value) for value in rng.integers(0, FRAME - CROP + 1, size=2))
        return Placement(angle, crop_y, crop_x)

    def to_dict(self) -> dict[str, Any]:
        if self.aligned:
            return {"name": self.name}
        return {"name": self.name, "seed": self.seed, "max_angle": MAX_ANGLE, "crop": CROP, "frame": FRAME,
                "fill": FILL}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AlignmentProtocol:
        return cls(values.get("name", "aligned"), values.get("seed", 0))

    def describe(self) -> str:
        """One line for tables, e.g. "rotated (seed 0): …"."""
        if self.aligned:
            return "aligned: images as captured"
        return (f"rotated (seed {self.seed}): every image, train and test, turned by a random angle in "
                f"(−{MAX_ANGLE:g}°, +{MAX_ANGLE:g}°) and cut as a random {CROP} crop of the {FRAME} frame; corners "
                "filled by reflection, mask 0 there")


ALIGNED = AlignmentProtocol()
