"""Scoring folders on a Ray cluster when one machine is not enough (`predict --engine ray`).

Ray Data carries the work: one dataset row per chunk of files (the very chunks `batch.score_locally` makes), and
`map_batches` over a pool of actors, each loading the model once and scoring its chunks with `batch.score_tasks`
— on a GPU of its own where the cluster has GPUs. The driver keeps the books as for local scoring (state file,
CSV, resuming: `batch.score_files`), so the results are the same files with the same scores. Workers read the
images themselves, by path (a file system every node sees) or by URI (``s3://…``: `data.uris`).

Ray is an optional extra (``pip install "inspection[ray]"``); nothing else in the package imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..model.base import AnomalyModel
from .batch import Task, chunks, score_tasks

INSTALL_HINT = 'pip install "inspection[ray]"  (or: pip install "ray[data]")'


def _ray():
    try:
        import ray
    except ImportError as error:
        raise ParameterError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from error
    return ray


class _ChunkScorer:
    """A Ray actor: the model, loaded once, scoring one chunk of files per call."""

    def __init__(self, model_path: str, device: str, out: str, overlays: str, threads: int) -> None:
        import torch

        from ..registry import load_model

        torch.set_num_threads(threads)  # the CPUs Ray gave this actor, not every core of its node
        self.model = load_model(model_path, device=device)
        self.out, self.overlays = Path(out), overlays

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tasks, rows = [], []
        for text in batch["chunk"]:
            chunk = [Task.from_json(item) for item in json.loads(text)]
            for task, row in score_tasks(self.model, chunk, self.out, self.overlays):
                tasks.append(task.to_json())
                rows.append(json.dumps(row))
        return {"task": np.array(tasks, dtype=object), "row": np.array(rows, dtype=object)}


class RayEngine:
    """A `batch.Engine` that scores on Ray: `address` of a running cluster (None: start a local Ray on this
    machine, `local_cpus` CPUs, all by default), `actors` model copies (None: one per GPU when the cluster has
    GPUs, else one per `cpus_per_actor` CPUs)."""

    def __init__(self, model_path: str | Path, address: str | None = None, actors: int | None = None,
                 cpus_per_actor: int = 1, local_cpus: int | None = None) -> None:
        if actors is not None and actors < 1:
            raise ParameterError(f"--actors must be at least 1, not {actors}")
        if cpus_per_actor < 1:
            raise ParameterError(f"--cpus-per-actor must be at least 1, not {cpus_per_actor}")
        _ray()  # a missing extra is said before any work starts
        self.model_path = str(model_path)
        self.address, self.actors, self.cpus_per_actor, self.local_cpus = address, actors, cpus_per_actor, local_cpus
        self.description = ""
        self._started = False  # whether this engine started the Ray it uses (and so stops it)

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if self.address:
                ray.init(address=self.address, **options)
            else:
                ray.init(num_cpus=self.local_cpus, **options)
            self._started = True
        return ray

    def _pool(self, ray: Any) -> tuple[int, float]:
        """(actors, GPUs per actor) for the cluster as it is now."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            return (self.actors or gpus), 1.0
        return (self.actors or max(1, cpus // self.cpus_per_actor)), 0.0

    def __call__(self, model: AnomalyModel, tasks: Sequence[Task], out: Path, batch_size: int, overlays: str
                 ) -> Iterator[tuple[Task, dict[str, Any]]]:
        if not tasks:
            return
        ray = self._connect()
        actors, gpus = self._pool(ray)
        work = chunks(tasks, batch_size)
        actors = min(actors, len(work))
        # The saved device setting of the model, unless the actor has a GPU of its own.
        device = "cuda" if gpus else "cpu"
        self.description = f"Ray: {actors} actor(s), {'1 GPU' if gpus else f'{self.cpus_per_actor} CPU'} each"
        items = [{"chunk": json.dumps([task.to_json() for task in chunk])} for chunk in work]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _ChunkScorer, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_args=(self.model_path, device, str(out.resolve()), overlays, self.cpus_per_actor),
            num_cpus=self.cpus_per_actor, num_gpus=gpus)
        for result in dataset.iter_rows():
            yield Task.from_json(result["task"]), json.loads(result["row"])

    def shutdown(self) -> None:
        """Disconnect from the Ray this engine connected to (stopping it when it was a local one it started); a
        Ray session the caller had started is left as it was."""
        if self._started:
            _ray().shutdown()
            self._started = False
