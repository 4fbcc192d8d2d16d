"""The range a score histogram shows: the decision zone readable, far outliers counted instead of drawn.

Shared by the app's Plotly histograms and the HTML report's SVG one, so that both cut at the same place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Histograms end at Tukey's far-out fence (Q3 + 3 IQR): the outliers beyond are counted, not drawn.
OUTLIER_FENCE_IQR = 3.0


def histogram_range(values: Sequence[float] | np.ndarray, threshold: float) -> tuple[float, float]:
    """(low, limit) of a histogram of `values` that always shows `threshold`: from the lowest value (or the
    threshold) to the far-out fence of the values (or the threshold, when that is further)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return min(0.0, float(threshold)), max(1.0, float(threshold))
    first, third = np.quantile(values, [0.25, 0.75])
    limit = max(float(min(values.max(), third + OUTLIER_FENCE_IQR * (third - first))), float(threshold))
    return min(float(values.min()), float(threshold)), limit
