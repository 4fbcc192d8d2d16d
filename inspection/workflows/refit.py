"""Refitting a taught model whose method cannot learn without a refit (DFR, VAE, AnoGAN, Patch SVDD): the same method
and settings, fitted again on its dataset's training images and the images taught as good that it kept for this
(`inspection.teach`). The app runs it as a background training (`refit_arguments` → `train_in_process`); the CLI as
`inspection teach --refit`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import DatasetError, TeachingError
from ..model.modelfile import read_model_header, resolve_model_path
from ..progress import ProgressCallback
from ..teach.teaching import history, taught_good_images
from .train import TrainingResult, train

#: The key of the refitted model's info that lists the taught decisions it was fitted with.
REFITTED_KEY = "refitted_with_taught"


def refit_arguments(path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """`train`'s arguments for refitting a taught model: its method, settings, dataset and name, the good images it
    keeps for a refit, and the record of those decisions; the new model replaces the file (or goes to `out`).
    Raises TeachingError or DatasetError, in one line, when it cannot be refitted."""
    path = resolve_model_path(path)
    header = read_model_header(path)
    kept = taught_good_images(path)
    if not kept:
        raise TeachingError(f"{path.name}: no image taught as good waits for a refit")
    missing = [image for image in kept if not Path(image).is_file()]
    if missing:
        raise TeachingError(f"taught images are gone; the model cannot be fitted with them: {', '.join(missing[:3])}")
    if not header.info.data_path:
        raise DatasetError(f"{path.name} does not record the dataset it was fitted on: fit it again with the taught "
                           "images in its training folder")
    kept_set = set(kept)
    records = [decision.to_dict() for decision in history(path) if decision.image_path in kept_set]
    return {"method": header.method, "params": dict(header.params), "data": header.info.data_path,
            "out": str(resolve_model_path(out) if out is not None else path),
            "display_name": header.info.display_name, "extra_good": kept, "record": {REFITTED_KEY: records}}


def refit_with_taught(path: str | os.PathLike, out: str | os.PathLike | None = None,
                      progress: ProgressCallback | None = None) -> TrainingResult:
    """Fit a taught model again with the good images it keeps for a refit, evaluated on its test split."""
    return train(**refit_arguments(path, out), progress=progress)
