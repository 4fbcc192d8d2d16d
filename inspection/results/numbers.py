"""How a number reads wherever a person sees it (pages, report, CLI): one rounding per kind of number, so that the
same image shows the same score on every page."""

from __future__ import annotations

SCORE_DECIMALS = 3  # scores on the model's scale (0.5 = threshold): three decimals tell 0.499 from 0.501


def round_score(value: float) -> float:
    """A score (image, region or threshold, on the model's scale) rounded as every table shows it."""
    return round(float(value), SCORE_DECIMALS)


def score_text(value: float) -> str:
    """A score (image, region or threshold, on the model's scale) as every page writes it."""
    return f"{float(value):.{SCORE_DECIMALS}f}"
