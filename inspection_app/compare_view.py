"""What the Compare page picks and draws by default: the open dataset's models, one colour scale for them all."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from inspection.data.datasets import Dataset
from inspection.model.base import AnomalyModel
from inspection.results.pictures import SCALE_MAX

from .library import ModelEntry


def default_compare_models(entries: Sequence[ModelEntry], dataset: Dataset | None, count: int = 3) -> list[str]:
    """The paths of the newest `count` models made on the open dataset (the newest models when there are none)."""
    if dataset is not None:
        root = Path(dataset.root).resolve()
        own = [entry for entry in entries if entry.data_path and Path(entry.data_path).resolve() == root]
        if own:
            return [str(entry.path) for entry in own[:count]]
    return [str(entry.path) for entry in entries[:count]]


def common_colour_max(models: Iterable[AnomalyModel]) -> float:
    """One colour scale for several models: up to the highest of their colour maxima."""
    maxima = [model.calibration.colour_max for model in models if model.calibration is not None]
    return max(maxima, default=SCALE_MAX * 2)
