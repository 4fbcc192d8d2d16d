"""What the Compare page picks and draws by default: the open dataset's models, one colour scale for them all."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from inspection.data.datasets import Dataset
from inspection.model.base import AnomalyModel
from inspection.progress import Progress
from inspection.results.pictures import SCALE_MAX

from .library import ModelEntry
from .model_choice import dataset_models


def default_compare_models(entries: Sequence[ModelEntry], dataset: Dataset | None, count: int = 3) -> list[str]:
    """The paths of the newest `count` models made on the open dataset (the newest models when there are none)."""
    # The same models the sidebar's picker calls the open dataset's (its folder first, then its category).
    own = dataset_models(entries, dataset)
    return [str(entry.path) for entry in (own or entries)[:count]]


def column_header(entry: ModelEntry, version: str = "") -> str:
    """A heatmap column's header (markdown): the model's name, then method/backbone and its resize mode and working
    size — models that differ only there (e.g. 'aspect 256' and 'center_crop 256→224') are told apart — and the
    version that scores (`teach_view.model_version`) when given."""
    header = f"**{entry.name}**  \n{entry.method}/{entry.backbone or '—'} · {entry.resize or '—'}"
    return f"{header}  \n{version}" if version else header


def common_colour_max(models: Iterable[AnomalyModel]) -> float:
    """One colour scale for several models: up to the lowest of their colour maxima. Every map is on its model's
    scale (0.5 at its threshold), so a shared top only decides how far above the threshold the colours run out;
    the highest top (one model's far-off scores) would leave the others' defects pale, the lowest keeps every
    model's defects in the warm colours (higher scores saturate at the top colour)."""
    maxima = [model.calibration.colour_max for model in models if model.calibration is not None]
    return min(maxima, default=SCALE_MAX * 2)


def measure_progress(bar: Any, index: int, count: int, text: str) -> Callable[[Progress], None]:
    """A progress callback for model `index` of `count` measured in turn: its steps move one bar across its share
    (no empty bar while a model is evaluated and timed)."""
    def report(update: Progress) -> None:
        share = update.step / update.total if update.total else 0.0
        bar.progress(min(1.0, (index + share) / count), text=f"{text}: {update.stage} {update.step}/{update.total}")
    return report
