"""Refitting a taught model whose method cannot learn without a refit (DFR, VAE, AnoGAN, Patch SVDD): the same method
and settings, fitted again on its dataset's training images and the images taught as good that it kept for this
(`inspection.teach`). The app runs it as a background training; the CLI as `inspection teach --refit`."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.datasets import Sample, open_dataset
from ..errors import DatasetError, TeachingError
from ..model.modelfile import read_model_header, resolve_model_path
from ..progress import ProgressCallback
from ..registry import create_model
from ..teach.teaching import history, taught_good_images
from .train import TrainingResult, fit_on_dataset


def refit_with_taught(path: str | os.PathLike, out: str | os.PathLike | None = None,
                      progress: ProgressCallback | None = None) -> TrainingResult:
    """Fit a taught model again with the good images it keeps for a refit; the new model replaces the file (or goes
    to `out`), evaluated on its test split, and records which taught images it was fitted with."""
    path = resolve_model_path(path)
    header = read_model_header(path)
    kept = [Path(image) for image in taught_good_images(path)]
    if not kept:
        raise TeachingError(f"{path.name}: no image taught as good waits for a refit")
    missing = [str(image) for image in kept if not image.is_file()]
    if missing:
        raise TeachingError(f"taught images are gone; the model cannot be fitted with them: {', '.join(missing[:3])}")
    if not header.info.data_path:
        raise DatasetError(f"{path.name} does not record the dataset it was fitted on: fit it again with the taught "
                           "images in its training folder")
    dataset = open_dataset(header.info.data_path)
    taught = [Sample(image, 0, "good", None, "train") for image in kept]
    dataset.train = [*dataset.train, *taught]
    model = create_model(header.method, **header.params)
    evaluation = fit_on_dataset(model, dataset, progress=progress)
    model.info.display_name = header.info.display_name
    model.info.extra["refitted_with_taught"] = [decision.to_dict() for decision in history(path)
                                                if str(Path(decision.image_path)) in {str(image) for image in kept}]
    target = resolve_model_path(out) if out is not None else path
    model.save(target)
    return TrainingResult(model, evaluation, target)
