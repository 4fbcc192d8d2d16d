"""Which model the pages pick: the open dataset's newest one whenever the open dataset changes, and the user's
own pick for as long as it stays (plain functions: no Streamlit here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from inspection.data.datasets import Dataset

from .library import ModelEntry


def dataset_key(dataset: Dataset | None) -> str | None:
    """What identifies an open dataset for the model choice: its category folder, resolved; None when none."""
    return None if dataset is None else str(Path(dataset.root).expanduser().resolve())


def _same_folder(data_path: str, key: str) -> bool:
    """Whether a model's recorded dataset folder is the folder `key` names."""
    try:
        return bool(data_path) and str(Path(data_path).expanduser().resolve()) == key
    except (OSError, RuntimeError):  # an unreadable recorded path is simply not this dataset
        return False


def dataset_models(entries: Sequence[ModelEntry], dataset: Dataset | None) -> list[ModelEntry]:
    """The models made on the open dataset, newest first: those made on its very folder, then those made on
    another copy of its category (e.g. the same data mounted elsewhere); [] when no dataset is open."""
    key = dataset_key(dataset)
    if dataset is None or key is None:
        return []
    own = [entry for entry in entries if _same_folder(entry.data_path, key)]
    alike = [entry for entry in entries
             if entry not in own and entry.category and entry.category == dataset.category]
    return own + alike


def default_model_for(entries: Sequence[ModelEntry], dataset: Dataset | None) -> ModelEntry | None:
    """The model a page starts with: the newest one made on the open dataset, else the newest one."""
    own = dataset_models(entries, dataset)
    return own[0] if own else (entries[0] if entries else None)


def followed_choice(entries: Sequence[ModelEntry], dataset: Dataset | None, current: str | None,
                    chosen_for: str | None) -> str | None:
    """The model path the picker shows: the open dataset's newest model when the open dataset is not the one the
    current choice was made with (or nothing usable is chosen), else the current choice.

    `chosen_for` is the `dataset_key` the current choice was made with; None means the choice was set on purpose
    without a dataset in mind (a fresh model, a link to an image): it is kept. With no dataset open (a folder
    not typed yet) the choice is kept as well.
    """
    if not entries:
        return None
    usable = {str(entry.path) for entry in entries}
    opened = dataset_key(dataset)
    if current in usable and (opened is None or chosen_for is None or chosen_for == opened):
        return current
    default = default_model_for(entries, dataset)
    return None if default is None else str(default.path)


def choice_note(entries: Sequence[ModelEntry], dataset: Dataset | None,
                chosen: ModelEntry | None) -> tuple[str, str] | None:
    """(kind, text) when the chosen model was not made on the open dataset: ("none", …) when the dataset has no
    model yet (then, and only then, training one is advised), ("other", …) naming its newest model when the user
    picked another; None when the choice fits or nothing is open."""
    if dataset is None or chosen is None:
        return None
    own = dataset_models(entries, dataset)
    if chosen in own:
        return None
    made_on = f"made on {chosen.category!r}" if chosen.category else "made on other data"
    if not own:
        return "none", (f"No model of {dataset.category!r} yet: {chosen.name} was {made_on}. Train one on the "
                        "**Train** page.")
    return "other", f"{chosen.name} was {made_on}; the newest model of {dataset.category!r} is {own[0].name}."
