"""What scores images, whichever engine runs it: a fitted `AnomalyModel` in torch, or an exported copy run by
`inspection.runtime` (onnxruntime, OpenVINO) without torch. Scoring files (`workflows.batch`), the service and
the pipelines take a `Scorer`; this module imports nothing heavy, so that the torch-free runtime can name it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..data.preprocess import Preprocessing
from .calibration import Calibration
from .header import ModelInfo
from .prediction import Prediction


@runtime_checkable
class Scorer(Protocol):
    """A fitted model as the scoring paths use it: preprocessing, thresholds, identity, and `predict`."""

    #: The method's registry name, e.g. "patchcore".
    name: str
    #: "torch" for the model itself; "onnx" or "openvino" for an exported copy.
    runtime: str
    preprocessing: Preprocessing
    calibration: Calibration | None
    info: ModelInfo

    @property
    def fingerprint(self) -> str:
        """The model's identity (method, creation, settings, calibration): equal for a model and its export."""

    def predict(self, images: Sequence[Any], batch_size: int | None = None) -> Prediction:
        """Raw maps, scores, geometries, calibration and familiarity distances for RGB arrays or paths."""
