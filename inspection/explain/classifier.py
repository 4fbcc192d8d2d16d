"""An optional good/defect classifier head on a model's backbone, and its class activation map (CAM).

For a user with some labelled defect images, as a comparison view beside the anomaly map (the seed's recipe:
Zhou et al., CVPR 2016). The head is a logistic regression on the globally averaged activations of one of the
model's backbone layers (frozen), fitted on good and defect images with balanced class weights. Its logit is
w·GAP(A) + b, so the map Σ_c w_c A_c(x, y) averages to the logit (less b): through a ReLU, upsampled to the
working resolution and divided by its maximum, that is the CAM — where the layer holds evidence for "defect".

It can only recognise the kinds of defect it was shown, where the anomaly map flags anything unlike the good
parts; with a few dozen images it is a view, not a verdict (the model's threshold stays the decision).

The head lives in the model file: tensors ``classifier.weight`` / ``classifier.bias`` and ``info.defect_classifier``
(layer, image counts, cross-validated accuracy, when). `attach_defect_classifier` writes it atomically, leaving
every other tensor and setting as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import Geometry, map_to_original
from ..errors import ModelFileError, NotExplainableError, ParameterError
from ..model.backbone_model import BackboneModel
from ..model.base import ATTACHED_INFO_KEY, ATTACHED_PREFIX, AnomalyModel
from ..model.batching import decode
from ..model.modelfile import read_model_file, resolve_model_path, write_model_file
from ..ops.smoothing import upsample
from ..results.pictures import overlay_range
from .gradcam import default_layer, explainable_layers, fitted_backbone_model

TENSOR_PREFIX, INFO_KEY = ATTACHED_PREFIX, ATTACHED_INFO_KEY
#: Fewer labelled images of either kind than this and no head is fitted.
MIN_IMAGES_PER_CLASS = 3

#: The sentence pages and the README use to tell the CAM from the anomaly map.
DIFFERENCE = ("The classifier's CAM shows where the backbone holds evidence of the defects it was shown (it knows "
              "only those kinds); the anomaly map flags anything unlike the good parts.")


@dataclass
class DefectClassifier:
    """A fitted head: weights on one layer's raw activations (the standardisation folded in) and its record."""

    layer: str
    weight: torch.Tensor  # [C]
    bias: float
    record: dict[str, Any]  # n_good, n_defect, cv_accuracy, train_accuracy, created, layer

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{TENSOR_PREFIX}weight": self.weight.detach().float().cpu(),
                f"{TENSOR_PREFIX}bias": torch.tensor([self.bias], dtype=torch.float32)}

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], record: Any) -> DefectClassifier:
        if not isinstance(record, dict) or not isinstance(record.get("layer"), str):
            raise ModelFileError(f"field 'info.{INFO_KEY}' must hold the classifier's layer")
        weight, bias = tensors.get(f"{TENSOR_PREFIX}weight"), tensors.get(f"{TENSOR_PREFIX}bias")
        if weight is None or bias is None or weight.ndim != 1 or bias.numel() != 1:
            raise ModelFileError("the defect classifier's tensors are missing or malformed")
        return cls(record["layer"], weight.float(), float(bias.flatten()[0]), dict(record))


def defect_classifier(model: AnomalyModel) -> DefectClassifier | None:
    """The defect classifier attached to a loaded model's file; None when it has none."""
    if not model.attached:
        return None
    return DefectClassifier.from_file(model.attached, model.info.get(INFO_KEY))


def unavailable_reason(model: AnomalyModel) -> str | None:
    """Why this model cannot carry a defect classifier, in one sentence; None when it can."""
    if not isinstance(model, BackboneModel):
        return f"A defect classifier sits on a pretrained backbone; {model.label} has none."
    return None


def _backbone_model(model: AnomalyModel) -> BackboneModel:
    return fitted_backbone_model(model, unavailable_reason(model))


def _check_layer(model: BackboneModel, layer: str | None) -> str:
    layer = layer or default_layer(model)
    if layer not in model.layer_names:
        raise ParameterError(f"layer {layer!r} is not one of the model's layers {list(explainable_layers(model))}")
    return layer


def _activations(model: BackboneModel, image: Any, layer: str) -> tuple[torch.Tensor, Geometry, tuple[int, int]]:
    """One image's activations [1, C, h, w] at `layer`, preprocessed as the model scores it; its geometry; and the
    working size."""
    tensor, (geometry,) = model.preprocessing.batch([decode(image)])
    with torch.no_grad():
        activations = model.extractor(tensor.to(model.torch_device))[layer]
    return activations, geometry, (int(tensor.shape[-2]), int(tensor.shape[-1]))


def pooled_features(model: AnomalyModel, images: Sequence[Any], layer: str | None = None) -> np.ndarray:
    """Globally averaged activations [N, C] of images (paths or RGB arrays) at a layer of the model's backbone."""
    model = _backbone_model(model)
    layer = _check_layer(model, layer)
    # One image at a time: images of other sizes (aspect mode) cannot share a batch, and a head needs few.
    return np.stack([_activations(model, image, layer)[0].mean(dim=(2, 3))[0].double().cpu().numpy()
                     for image in images])


def fit_defect_classifier(model: AnomalyModel, good: Sequence[Any], defect: Sequence[Any], layer: str | None = None,
                          seed: int = 0) -> DefectClassifier:
    """Fit the head on labelled good and defect images (paths or RGB arrays); its cross-validated accuracy (up to 5
    stratified folds) goes in its record."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    model = _backbone_model(model)
    layer = _check_layer(model, layer)
    if min(len(good), len(defect)) < MIN_IMAGES_PER_CLASS:
        raise ParameterError(f"a defect classifier needs at least {MIN_IMAGES_PER_CLASS} good and "
                             f"{MIN_IMAGES_PER_CLASS} defect images (got {len(good)} good, {len(defect)} defect)")
    features = pooled_features(model, list(good) + list(defect), layer)
    labels = np.array([0] * len(good) + [1] * len(defect))
    mean, spread = features.mean(axis=0), features.std(axis=0) + 1e-6
    standardised = (features - mean) / spread

    def head() -> LogisticRegression:
        return LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)

    folds = min(5, len(good), len(defect))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    cv_accuracy = float(np.mean(cross_val_score(head(), standardised, labels, cv=splits)))
    fitted = head().fit(standardised, labels)
    coefficients = fitted.coef_[0] / spread  # on raw activations: w·(x − μ)/σ + b = (w/σ)·x + (b − w·μ/σ)
    bias = float(fitted.intercept_[0] - float(coefficients @ mean))
    train_accuracy = float(fitted.score(standardised, labels))
    record = {"layer": layer, "n_good": len(good), "n_defect": len(defect), "cv_folds": folds,
              "cv_accuracy": round(cv_accuracy, 4), "train_accuracy": round(train_accuracy, 4),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return DefectClassifier(layer, torch.from_numpy(coefficients).float(), bias, record)


def attach_defect_classifier(path: str | os.PathLike, classifier: DefectClassifier) -> None:
    """Write the head into a model file (replacing an earlier one), atomically; nothing else in it changes."""
    path = resolve_model_path(path)
    tensors, header = read_model_file(path)
    tensors = {name: tensor for name, tensor in tensors.items() if not name.startswith(TENSOR_PREFIX)}
    header = dict(header)
    header["info"] = {**header.get("info", {}), INFO_KEY: classifier.record}
    write_model_file(path, {**tensors, **classifier.tensors()}, header)


@dataclass
class ClassifierCam:
    """The head's verdict and CAM for one image, at the working resolution."""

    cam: np.ndarray  # [H, W] float32 in [0, 1]
    probability: float  # of "defect"
    layer: str
    geometry: Geometry

    def on_original(self) -> np.ndarray:
        return map_to_original(self.cam, self.geometry)

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The CAM over the original image, in linear colours from 0 (blue) to 1 (red)."""
        return overlay_range(image, self.on_original(), 0.0, 1.0)


def class_activation_map(model: AnomalyModel, image: Any) -> ClassifierCam:
    """The defect probability and CAM of one image (an RGB array or a file) from the model's defect classifier."""
    model = _backbone_model(model)
    classifier = defect_classifier(model)
    if classifier is None:
        raise NotExplainableError("this model has no defect classifier: fit one on labelled good and defect "
                                  "images (python -m inspection classifier --model … --good … --defect …)")
    activations, geometry, size = _activations(model, image, classifier.layer)
    weight = classifier.weight.to(activations.device, activations.dtype)
    if weight.numel() != activations.shape[1]:
        raise ModelFileError(f"the defect classifier expects {weight.numel()} channels at {classifier.layer}, the "
                             f"backbone gives {activations.shape[1]}")
    evidence = torch.einsum("c,bchw->bhw", weight, activations)
    probability = float(torch.sigmoid(evidence.mean() + classifier.bias))
    maps = upsample(F.relu(evidence), size)[0]
    peak = float(maps.max())
    maps = maps / peak if peak > 0 else maps
    return ClassifierCam(maps.float().cpu().numpy(), probability, classifier.layer, geometry)

