"""The Compare page's colour scale, its progress while measuring, and box labels readable in its narrow columns."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from inspection.progress import Progress
from inspection.results.pictures import draw_boxes
from inspection_app.compare_view import common_colour_max, measure_progress


def _model(colour_max: float) -> SimpleNamespace:
    return SimpleNamespace(calibration=SimpleNamespace(colour_max=colour_max))


def test_one_models_far_off_top_does_not_wash_out_the_others():
    assert common_colour_max([_model(18.0), _model(1.3), _model(2.0)]) == 1.3
    assert common_colour_max([SimpleNamespace(calibration=None)]) > 0.5  # no calibrated model: a default above 0.5


def test_measuring_moves_the_bar_within_each_models_share():
    seen = []
    bar = SimpleNamespace(progress=lambda value, text: seen.append((value, text)))
    report = measure_progress(bar, 1, 4, "Evaluating b (2 of 4)")
    report(Progress("predict", 0, 10))
    report(Progress("predict", 5, 10))
    report(Progress("timing", 10, 10))
    assert [round(value, 3) for value, _ in seen] == [0.25, 0.375, 0.5]
    assert seen[1][1] == "Evaluating b (2 of 4): predict 5/10"


def test_a_box_label_is_a_readable_share_of_the_picture():
    for side in (256, 900):
        canvas = draw_boxes(np.zeros((side, side, 3), np.uint8), [(side // 4, side // 2, side // 2, side // 2 + 40)],
                            ["1.26"])
        above = canvas[: side // 2 - 2]  # the label sits above the box
        rows = np.flatnonzero((above > 200).any(axis=(1, 2)))
        assert rows.size and rows[-1] - rows[0] + 1 >= 0.03 * side, (side, rows[-1] - rows[0] + 1 if rows.size else 0)
