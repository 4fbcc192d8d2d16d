"""What a long-running step reports while it runs (the CLI draws bars from it, the app a progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Stage name, step out of total, and the loss when there is one."""

    stage: str
    step: int
    total: int
    loss: float | None = None


ProgressCallback = Callable[[Progress], None]


def no_progress(report: Progress) -> None:
    """A progress callback that ignores every report."""
