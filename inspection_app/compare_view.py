"""What the Compare page picks and draws by default: the open dataset's models, one colour scale for them all."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from inspection.data.datasets import Dataset
from inspection.model.base import AnomalyModel
from inspection.results.pictures import SCALE_MAX

from .library import ModelEntry
from .model_choice import dataset_models


def default_compare_models(entries: Sequence[ModelEntry], dataset: Dataset | None, count: int = 3) -> list[str]:
    """The paths of the newest `count` models made on the open dataset (the newest models when there are none)."""
    # The same models the sidebar's picker calls the open dataset's (its folder first, then its category).
    own = dataset_models(entries, dataset)
    return [str(entry.path) for entry in (own or entries)[:count]]


def column_header(entry: ModelEntry) -> str:
    """A heatmap column's header (markdown): the model's name, then method/backbone and its resize mode and working
    size — models that differ only there (e.g. 'aspect 256' and 'center_crop 256→224') are told apart."""
    return f"**{entry.name}**  \n{entry.method}/{entry.backbone or '—'} · {entry.resize or '—'}"


def common_colour_max(models: Iterable[AnomalyModel]) -> float:
    """One colour scale for several models: up to the highest of their colour maxima."""
    maxima = [model.calibration.colour_max for model in models if model.calibration is not None]
    return max(maxima, default=SCALE_MAX * 2)
