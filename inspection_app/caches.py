"""What the app keeps between reruns: loaded models, forward passes, explanations, decoded images, dataset listings.

Every cache key includes the file's modification time, so a rewritten model or image is never served stale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from inspection.bench.resize_modes import resize_mode_costs
from inspection.data.datasets import Dataset
from inspection.data.demo import demo_dataset
from inspection.data.images import load_image, read_image_info
from inspection.device import resolve_device
from inspection.explain.classifier import ClassifierCam, class_activation_map
from inspection.explain.gradcam import Box, Explanation, explain_image
from inspection.export.scorers import load_scorer
from inspection.features.cost import backbone_cost
from inspection.model.base import AnomalyModel
from inspection.model.prediction import Prediction
from inspection.model.scorer import Scorer
from inspection.registry import backbones, get_method, load_model

from .browse import thumbnail
from .library import ModelEntry
from .sources import DataSource, open_source


def file_key(path: Path) -> str:
    """The cache key of an image file: its path and version."""
    return f"{path}:{path.stat().st_mtime}"


@st.cache_resource(show_spinner="Loading the model…", max_entries=6)
def cached_model(path: str, modified: float) -> AnomalyModel:
    """A loaded model; `modified` (the file's mtime) makes a rewritten file load afresh."""
    return load_model(path)


@st.cache_resource(show_spinner=False, max_entries=128)
def cached_prediction(path: str, modified: float, image_key: str, _image: np.ndarray,
                      panels: bool = False) -> Prediction:
    """One forward pass per (model file version, image, panels or not): sliders and reruns reuse it. With
    `panels` it carries the method's views of its work (e.g. a reconstruction), which the Inspect page draws."""
    return cached_model(path, modified).predict([_image], panels=panels)


@st.cache_resource(show_spinner="Computing Grad-CAM…", max_entries=32)
def cached_explanation(path: str, modified: float, image_key: str, _image: np.ndarray, layer: str,
                       box: Box | None, guided: bool) -> Explanation:
    """Grad-CAM of one image's score per (model file version, image, layer, explained box, guided or not)."""
    return explain_image(cached_model(path, modified), _image, layer, box, guided)


@st.cache_resource(show_spinner="Computing the classifier's CAM…", max_entries=32)
def cached_classifier_cam(path: str, modified: float, image_key: str, _image: np.ndarray) -> ClassifierCam:
    """The defect classifier's probability and CAM of one image per (model file version, image)."""
    return class_activation_map(cached_model(path, modified), _image)


@st.cache_data(show_spinner=False, max_entries=256)
def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    info = read_image_info(path)
    return int(info["height"]), int(info["width"])


@st.cache_data(show_spinner="Measuring the resize modes…", max_entries=32)
def cached_resize_mode_costs(method: str, height: int, width: int, measure: bool) -> list[dict]:
    """Each resize mode's cost for one image of height × width with the method's default settings (rows)."""
    return [cost.to_dict() for cost in resize_mode_costs(get_method(method), {}, height, width, measure)]


@st.cache_data(show_spinner=False, max_entries=4000)
def cached_thumbnail(path: str, modified: float, size: int = 160) -> np.ndarray:
    """A dataset thumbnail, decoded once per file version."""
    return thumbnail(path, size)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_image(path: str, modified: float) -> np.ndarray:
    """A decoded dataset image (the few recently shown ones stay in memory)."""
    return load_image(path)


@st.cache_resource(show_spinner="Listing the dataset…", ttl=30, max_entries=8)
def cached_dataset(kind: str, root: str, category: str | None) -> Dataset:
    """A dataset listing (directory entries only), refreshed every 30 s so that new files show up."""
    return open_source(DataSource(kind, root, category))


@st.cache_resource(show_spinner="Generating the demo dataset (first start only)…")
def cached_demo_root() -> str:
    """The demo dataset's folder, generated on the first start."""
    return str(demo_dataset())


def load_path_image(path: Path) -> np.ndarray:
    """A dataset image file as RGB, cached per file version."""
    return cached_image(str(path), path.stat().st_mtime)


def predict_image(entry: ModelEntry, image: np.ndarray, image_key: str, panels: bool = False) -> Prediction:
    """The model's prediction for one image (with the method's panels when asked), computed once per (model file
    version, image key, panels)."""
    return cached_prediction(str(entry.path), entry.modified, image_key, image, panels)


def explain(entry: ModelEntry, image: np.ndarray, image_key: str, layer: str, box: Box | None,
            guided: bool) -> Explanation:
    """Grad-CAM (and Guided Grad-CAM when `guided`) of the image's score, or of a box's, computed once each."""
    return cached_explanation(str(entry.path), entry.modified, image_key, image, layer, box, guided)


def classifier_cam(entry: ModelEntry, image: np.ndarray, image_key: str) -> ClassifierCam:
    """The defect classifier's CAM of an image, computed once."""
    return cached_classifier_cam(str(entry.path), entry.modified, image_key, image)


@st.cache_resource(show_spinner="Opening the export…", max_entries=2)
def cached_export(folder: str, modified: float) -> Scorer:
    """An exported folder opened on its fastest installed runtime (`modified`, its manifest's mtime, is part of
    the key: a new export is opened afresh)."""
    return load_scorer(folder)


def model_of(entry: ModelEntry) -> AnomalyModel:
    """The loaded model of a models-folder entry (cached)."""
    return cached_model(str(entry.path), entry.modified)


@st.cache_data(show_spinner="Measuring the backbones…", max_entries=16)
def cached_backbone_costs(side: int, measure: bool) -> list[dict]:
    """Every registered backbone's parameters and mult-adds at an input side; ms per image on this device when
    measured (batch 1, median of 5 after warm-up; random weights, which do not change either number)."""
    device = resolve_device("auto").type
    return [backbone_cost(name, side, measure, repeats=5, device=device).to_dict() for name in backbones()]

