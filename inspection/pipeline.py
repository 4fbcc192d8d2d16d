"""Training end to end, written once for the CLI, the app and the bench: open the dataset, build the model,
fit and calibrate it, evaluate it on the test split, save one file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.datasets import Dataset, open_dataset
from .evaluate import Evaluation, evaluate, record_evaluation
from .model.base import AnomalyModel
from .model.modelfile import MODEL_SUFFIX
from .model.progress import Progress, ProgressCallback, no_progress
from .outputs import check_output_file
from .registry import create_model, get_method

#: Stages every training reports after the method's own (the method's labels come from its class).
COMMON_STAGE_LABELS = {
    "train": "Training",
    "epoch": "Training",
    "calibrate": "Calibrating thresholds on held-out good images",
    "predict": "Evaluating on the test split",
    "timing": "Timing the prediction",
    "save": "Saving the model file",
}


def stage_label(method: str, stage: str) -> str:
    """A readable name of a progress stage of `method`'s training, e.g. 'Selecting the memory bank (coreset)'."""
    try:
        labels = {**COMMON_STAGE_LABELS, **get_method(method).stage_labels}
    except ValueError:
        labels = COMMON_STAGE_LABELS
    return labels.get(stage, stage.replace("_", " ").capitalize() or "Starting")


def model_path(out: str | os.PathLike) -> Path:
    """Where `fit --out` writes: the path as given, with the model suffix added when it has none."""
    out = Path(out).expanduser()
    return out if out.suffix == MODEL_SUFFIX else out.with_name(out.name + MODEL_SUFFIX)


def fit_on_dataset(model: AnomalyModel, dataset: Dataset, progress: ProgressCallback | None = None,
                   evaluate_test: bool = True) -> Evaluation | None:
    """Fit on the train split (good images), then evaluate on the test split when there is one."""
    model.fit([sample.path for sample in dataset.train], progress=progress)
    model.info.update(category=dataset.category, data_path=str(dataset.root), layout=dataset.layout)
    if not (evaluate_test and dataset.test):
        return None
    evaluation = evaluate(model, dataset, progress=progress)
    record_evaluation(model, dataset, evaluation)
    return evaluation


@dataclass
class TrainingResult:
    """A trained model, its evaluation on the test split (None when skipped) and the file written (if any)."""

    model: AnomalyModel
    evaluation: Evaluation | None
    path: Path | None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.evaluation.metrics) if self.evaluation is not None else {}


def train(method: str, params: dict[str, Any], data: str | os.PathLike, category: str | None = None,
          out: str | os.PathLike | None = None, *, evaluate_test: bool = True, display_name: str = "",
          progress: ProgressCallback | None = None) -> TrainingResult:
    """Fit `method` with `params` on a dataset's good images, evaluate it, and save it to `out` (when given)."""
    progress = progress or no_progress
    model = create_model(method, **params)  # settings and the destination are checked before any data is read
    if out is not None:
        check_output_file(model_path(out))
    dataset = open_dataset(data, category)
    evaluation = fit_on_dataset(model, dataset, progress=progress, evaluate_test=evaluate_test)
    if display_name:
        model.info.display_name = display_name
    path = None
    if out is not None:
        progress(Progress("save", 0, 1))
        path = model.save(model_path(out))
        progress(Progress("save", 1, 1))
    return TrainingResult(model, evaluation, path)
