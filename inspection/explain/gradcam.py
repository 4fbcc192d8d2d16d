"""Why a score is what it is: Grad-CAM (Selvaraju et al., ICCV 2017) of the anomaly score, and Guided Grad-CAM.

The anomaly map says where an image differs from the good ones; Grad-CAM says which features the score depends
on. A method is `Explainable` when it offers the layers it can be explained at (`explanation_layers`) and a
differentiable pass that gives their activations with the maps and scores (`explanation_forward`): a protocol this
module checks for, not a part of every method's contract. For a method that scores pretrained
features (a `BackboneModel`), the score is a differentiable
function of each chosen layer's activations A through the method's own `score_features` — the very code that
scores. The gradient of the image score (or of a region's score: the maximum of the anomaly map inside a box)
with respect to A, averaged over positions, weighs A's channels; their weighted sum through a ReLU, upsampled
to the working resolution and divided by its maximum, is the Grad-CAM map in [0, 1]. PatchCore's nearest-
neighbour search has no gradient: its matches are held fixed and the distances to them are recomputed with
autograd (the same values). PaDiM's Mahalanobis distance and DFR's reconstruction error are differentiable as
they are. The VAE is explained at its own encoder's blocks, through its residual score (the maximum of
|x − f(x)|, blurred): its projection's steps are not differentiated, and the page says so.

Guided backpropagation (Springenberg et al., ICLR 2015 workshop) lets only positive gradients back through
the network's ReLUs (and leaky ReLUs), and only where their input was positive: the gradient of the score with
respect to the input image is then a fine-grained saliency. Guided Grad-CAM is that saliency (the largest
absolute value over the colour channels) times the upsampled Grad-CAM, divided by its 99th percentile and clipped
at 1 (it is sparse: divided by its maximum, it would be dark nearly everywhere).

AnoGAN (its score comes from an optimisation of z) and Patch SVDD (a nearest-patch distance in an embedding
learned from scratch, not exposed as layers) offer none: asking them raises `NotExplainableError`, whose
message says so (`unavailable_reason` gives it without raising).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import Geometry, map_to_original
from ..errors import NotExplainableError, ParameterError
from ..model.backbone_model import BackboneModel
from ..model.base import AnomalyModel
from ..model.batching import decode
from ..ops.smoothing import upsample
from ..results.pictures import overlay_range

#: A box of the working-resolution image, (x0, y0, x1, y1) with x1 and y1 exclusive — as a `Region`'s box.
Box = tuple[int, int, int, int]

#: Guided Grad-CAM is shown up to this quantile of its values (clipped above): guided backpropagation's saliency is
#: sparse, and divided by its maximum it would be dark nearly everywhere.
GUIDED_QUANTILE = 0.99

#: The sentence pages and the README use to tell the two maps apart.
DIFFERENCE = ("The anomaly map says where the image differs from good ones; Grad-CAM says which features the score "
              "depends on (a pretrained backbone's, or the VAE's own encoder's).")


@runtime_checkable
class Explainable(Protocol):
    """What a method offers to have its score explained (`BackboneModel` offers it for every feature method)."""

    def explanation_layers(self) -> dict[str, str]:
        """The layers whose activations a Grad-CAM of the score can look at, shallowest first, each with a label for
        pickers; {} when the method's score is not a differentiable function of features it exposes."""

    def explanation_forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """With autograd, for a normalised batch that requires grad: (each explanation layer's activations, anomaly
        maps [B, H, W] at the working size, image scores [B]) — the score Grad-CAM differentiates."""

    def explanation_network(self) -> nn.Module:
        """The network guided backpropagation runs through (its ReLUs)."""

    def explanation_note(self) -> str:
        """What the explained score is, when it is not exactly the model's own score ('' when it is)."""


def explanation_layers(model: AnomalyModel) -> dict[str, str]:
    """The layers Grad-CAM can look at, shallowest first, each with a label: {name: "blocks.4 (stride 16)"}; {} for a
    model that is not explainable."""
    return model.explanation_layers() if isinstance(model, Explainable) else {}


def explanation_note(model: AnomalyModel) -> str:
    """What an explanation of this model's score explains, when it is not exactly its score ('' when it is)."""
    return model.explanation_note() if isinstance(model, Explainable) else ""


def unavailable_reason(model: AnomalyModel) -> str | None:
    """Why Grad-CAM is not defined for this model, in one sentence; None when it is."""
    if explanation_layers(model):
        return None
    if isinstance(model, BackboneModel):
        return (f"Grad-CAM needs the score as a differentiable function of the backbone's features; {model.label} "
                "does not give it (it implements no score_features).")
    return (f"Grad-CAM explains a score through the features it is computed from; {model.label} exposes none that "
            "its score is a differentiable function of.")


def fitted(model: AnomalyModel, reason: str | None) -> AnomalyModel:
    """The model, fitted; NotExplainableError(`reason`) when `reason` says why it cannot be explained."""
    if reason is not None:
        raise NotExplainableError(reason)
    model._require_fitted()
    return model


def fitted_backbone_model(model: AnomalyModel, reason: str | None) -> BackboneModel:
    """`fitted`, for a model whose `reason` is None only on a pretrained backbone."""
    model = fitted(model, reason)
    assert isinstance(model, BackboneModel)
    return model


def _explainable(model: AnomalyModel) -> AnomalyModel:
    """The model, fitted and `Explainable`; NotExplainableError saying why not otherwise."""
    return fitted(model, unavailable_reason(model))


def explainable_layers(model: AnomalyModel) -> tuple[str, ...]:
    """The layers a Grad-CAM of this model can be taken at, shallowest first."""
    _explainable(model)
    return tuple(explanation_layers(model))


def default_layer(model: AnomalyModel) -> str:
    """The deepest of the model's layers: Grad-CAM's usual choice (its features are the most semantic)."""
    return explainable_layers(model)[-1]


@dataclass
class GradCam:
    """Grad-CAM of a batch's scores, at the working resolution."""

    grad_cam: torch.Tensor  # [B, H, W] in [0, 1]
    guided: torch.Tensor | None  # [B, H, W] in [0, 1]: Guided Grad-CAM, when asked for
    scores: torch.Tensor  # [B]: the explained scores (raw: the image score or the region's maximum)


def grad_cam(model: AnomalyModel, images: torch.Tensor, layer: str | None = None, box: Box | None = None,
             guided: bool = False) -> GradCam:
    """Grad-CAM of the scores of a normalised batch [B, 3, H, W] at `layer` (the deepest of the model's by
    default): of the image scores, or with `box` of the maximum of each anomaly map inside that box. With
    `guided`, Guided Grad-CAM too (one more forward and backward pass)."""
    model = _explainable(model)
    layer = _check_layer(model, layer)
    images = images.to(model.torch_device)
    _check_box(box, images.shape[-2:])
    with torch.enable_grad():
        by_name, scores = _scored(model, images, box)
        activations = by_name[layer]
        (gradients,) = torch.autograd.grad(scores.sum(), activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # one weight per channel: the averaged gradient
    cams = _unit_max(upsample(F.relu((weights * activations.detach()).sum(1)), images.shape[-2:]))
    guided_cams = None
    if guided:
        with torch.enable_grad(), guided_relus(model.explanation_network()):
            inputs = images.detach().requires_grad_(True)
            _, guided_scores = _scored(model, inputs, box)
            (saliency,) = torch.autograd.grad(guided_scores.sum(), inputs)
        guided_cams = _unit_quantile(saliency.abs().amax(dim=1) * cams, GUIDED_QUANTILE)
    return GradCam(cams, guided_cams, scores.detach())


def _scored(model: AnomalyModel, images: torch.Tensor, box: Box | None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass with autograd: every chosen layer's activations, and the score to explain per image."""
    if not images.requires_grad:
        # The network's weights are frozen: an input that asks for gradients puts the activations in the graph.
        images = images.detach().requires_grad_(True)
    by_name, maps, scores = model.explanation_forward(images)
    if box is not None:
        x0, y0, x1, y1 = box
        scores = maps[:, y0:y1, x0:x1].flatten(1).amax(dim=1)
    return by_name, scores


def _unit_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map [B, H, W] divided by its maximum (a map that is 0 everywhere stays 0)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak[:, None, None]


def _unit_quantile(maps: torch.Tensor, quantile: float) -> torch.Tensor:
    """Each map [B, H, W] divided by its `quantile`, clipped at 1 (or by its maximum when that quantile is 0)."""
    flat = maps.flatten(1)
    # kthvalue, not torch.quantile: the latter refuses inputs of more than 2^24 values.
    scale = flat.kthvalue(max(1, round(quantile * flat.shape[1])), dim=1).values
    scale = torch.where(scale > 0, scale, flat.amax(dim=1)).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps / scale[:, None, None]).clamp_max(1.0)


def _check_layer(model: AnomalyModel, layer: str | None) -> str:
    layers = explainable_layers(model)
    if layer is None:
        return layers[-1]
    if layer not in layers:
        raise ParameterError(f"layer {layer!r} is not one of this model's layers: {', '.join(layers)}")
    return layer


def _check_box(box: Box | None, size: torch.Size) -> None:
    if box is None:
        return
    height, width = int(size[0]), int(size[1])
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ParameterError(f"box {tuple(box)} is not a non-empty box inside the {width}×{height} working image "
                             "(x0, y0, x1, y1; x1 and y1 exclusive)")


class _PositiveGradients(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (guided backpropagation's rule)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:
        return values.clone()

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.clamp_min(0)


@contextmanager
def guided_relus(network: nn.Module) -> Iterator[None]:
    """Inside: guided backpropagation through the network's ReLU and ReLU6 modules, in this thread only.

    Each activation's output passes through `_PositiveGradients`, so its gradient is clamped at 0 before the
    ReLU's own backward zeroes it where the input was not positive: together, guided backpropagation. A hook
    on the module's output, not a backward hook on the module, so that in-place ReLUs keep working. The
    extractor is shared by every model of its backbone: other threads' passes are left as they are.
    """
    thread = threading.get_ident()

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != thread or not output.requires_grad:
            return None
        return _PositiveGradients.apply(output)

    handles = [module.register_forward_hook(hook) for module in network.modules()
               if isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Explanation:
    """Grad-CAM of one image's score at the working resolution, and where it lies on the original image."""

    grad_cam: np.ndarray  # [H, W] float32 in [0, 1]
    guided: np.ndarray | None  # [H, W] float32 in [0, 1]: Guided Grad-CAM, when asked for
    layer: str
    box: Box | None  # the region explained (working resolution); None: the image score
    score: float  # the explained score, raw (the model's own units)
    geometry: Geometry

    def on_original(self, guided: bool = False) -> np.ndarray:
        """The map (Guided Grad-CAM when `guided`) on the original image's grid; NaN where it was not inspected."""
        values = self.guided if guided else self.grad_cam
        if values is None:
            raise ValueError("this explanation was computed without guided=True")
        return map_to_original(values, self.geometry)

    def overlay(self, image: np.ndarray, guided: bool = False) -> np.ndarray:
        """The map over the original image, in linear colours from 0 (blue) to 1 (red)."""
        return overlay_range(image, self.on_original(guided), 0.0, 1.0)


def explain_image(model: AnomalyModel, image: Any, layer: str | None = None, box: Box | None = None,
                  guided: bool = False) -> Explanation:
    """Grad-CAM (and Guided Grad-CAM when `guided`) of one image's score: an RGB array or an image file."""
    model = _explainable(model)
    tensor, (geometry,) = model.preprocessing.batch([decode(image)])
    layer = _check_layer(model, layer)
    found = grad_cam(model, tensor, layer, box, guided)
    return Explanation(found.grad_cam[0].float().cpu().numpy(),
                       None if found.guided is None else found.guided[0].float().cpu().numpy(),
                       layer, box, float(found.scores[0]), geometry)
