"""What a long-running step reports while it runs (the CLI draws bars from it, the app a progress bar)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Stage name, step out of total, and the loss when there is one (all named losses when there are several)."""

    stage: str
    step: int
    total: int
    loss: float | None = None  # the main loss (the one a chart of a single curve shows)
    losses: Mapping[str, float] | None = None  # every named loss when there are several, e.g. a GAN's two


ProgressCallback = Callable[[Progress], None]


def no_progress(report: Progress) -> None:
    """A progress callback that ignores every report."""
