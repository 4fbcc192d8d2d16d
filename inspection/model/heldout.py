"""The held-out good images of fit, kept in the model file as their backbone features, so that a model that learns
without a refit (`AnomalyModel.learn_good`) can score its calibration set again: the threshold's promise then rests
on the scores the model gives now, not on those it gave before it was taught.

The features are stored in half precision, one chunk per scoring batch (aspect mode batches images of one working
size; tiles mode gives several rows per image, `owners` says whose), and only up to `MAX_MIB`. A method may keep more
beside them (`extras`): PatchCore keeps its held-out patches' distances to the bank of fit, so that scoring again
searches only the rows taught since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

#: Tensors of the held-out features in a model file: "heldout.<chunk>.<part>".
HELDOUT_PREFIX = "heldout."
#: The model info entry that says what was kept ({"images", "files", "mib"}), or why nothing was ({"reason"}).
INFO_KEY = "heldout_features"
#: Held-out features larger than this are not kept (a very large calibration set): a taught model then keeps the
#: held-out scores of fit.
MAX_MIB = 64


@dataclass
class HeldoutChunk:
    """One scoring batch of held-out images as the method's scoring takes them after the backbone."""

    features: list[torch.Tensor]  # the chosen layers' maps, [rows, C, h, w] each, float16
    size: tuple[int, int]  # the working size the features came from
    owners: torch.Tensor  # [rows] the held-out image (its index in the calibration set) each row belongs to
    content: torch.Tensor | None = None  # [rows, 2] aspect mode: each image's content height and width
    #: What the method keeps beside the features to score them again faster (e.g. PatchCore's distances at fit).
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in [*self.features, *self.extras.values()])


def to_tensors(chunks: Sequence[HeldoutChunk]) -> dict[str, torch.Tensor]:
    """The chunks as named tensors for the model file."""
    tensors: dict[str, torch.Tensor] = {}
    for index, chunk in enumerate(chunks):
        key = f"{HELDOUT_PREFIX}{index}."
        tensors.update({f"{key}layer{layer}": feature for layer, feature in enumerate(chunk.features)})
        tensors[f"{key}size"] = torch.tensor(chunk.size, dtype=torch.long)
        tensors[f"{key}owners"] = chunk.owners
        if chunk.content is not None:
            tensors[f"{key}content"] = chunk.content
        tensors.update({f"{key}extra.{name}": tensor for name, tensor in chunk.extras.items()})
    return tensors


def from_tensors(tensors: Mapping[str, torch.Tensor]) -> list[HeldoutChunk]:
    """The chunks `to_tensors` wrote (the file's other tensors are ignored)."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith(HELDOUT_PREFIX):
            index, part = name[len(HELDOUT_PREFIX):].split(".", 1)
            parts.setdefault(int(index), {})[part] = tensor.cpu()
    chunks = []
    for index in sorted(parts):
        part = parts[index]
        layers = sorted((name for name in part if name.startswith("layer")), key=lambda name: int(name[5:]))
        extras = {name[len("extra."):]: tensor for name, tensor in part.items() if name.startswith("extra.")}
        chunks.append(HeldoutChunk([part[name] for name in layers], tuple(int(v) for v in part["size"].tolist()),
                                   part["owners"].long(), part.get("content"), extras))
    return chunks


def files_digest(files: Sequence[str]) -> str:
    """What names a calibration set (its files, in order): the features back it while it is unchanged."""
    return hashlib.sha256(json.dumps(list(files)).encode()).hexdigest()[:16]


def info_entry(files: Sequence[str], nbytes: int) -> dict[str, object]:
    """The model info entry (`INFO_KEY`) of features kept for the calibration set `files`, taking `nbytes`."""
    return {"images": len(files), "files": files_digest(files), "mib": round(nbytes / 2**20, 1)}


def within_limit(nbytes: int) -> bool:
    """Whether kept features of `nbytes` stay within `MAX_MIB`."""
    return nbytes <= MAX_MIB * 2**20


def image_scores(chunks: Sequence[HeldoutChunk], score: Callable[[HeldoutChunk], torch.Tensor],
                 count: int) -> np.ndarray:
    """Raw image scores [count] of the held-out images: each chunk's rows scored by `score`, an image's score the
    highest of its rows' (tiles mode's rule)."""
    scores = torch.full((count,), float("-inf"), dtype=torch.float64)
    for chunk in chunks:
        rows = score(chunk).detach().double().cpu()
        scores.scatter_reduce_(0, chunk.owners, rows, reduce="amax")
    return scores.numpy()
