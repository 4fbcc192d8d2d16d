"""Table rows of the app: models' recorded metrics and metrics measured now, with the same columns."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from inspection.workflows.evaluate import round_metrics

#: Column settings of the model tables (Train page, Compare page), as `st.dataframe(column_config=…)` takes them:
#: the date wide enough to read whole, and what the resize column means.
MODEL_COLUMNS: dict[str, dict[str, Any]] = {
    "created": {"width": 130, "help": "When the model was trained (UTC)."},
    "resize": {"width": "medium", "help": "Resize mode and working size: center_crop 256→224 = shorter side to 256 "
                                          "px, centre 224 × 224 px inspected; full 224 = the whole image squeezed "
                                          "to 224 × 224; aspect 256 = shorter side to 256 px, aspect kept; tiles 448 "
                                          "(224 px) = shorter side to 448 px, scored in 224 px tiles."},
}

#: What a model table shows in the cells of metrics that were not measured (not "None").
EMPTY_CELL = "—"


def metric_cells(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline metric columns of a table row (None where a metric was not measured)."""
    numbers = {key: float(value) for key, value in metrics.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    rounded = round_metrics(numbers, 3)
    speed = numbers.get("predict_ms_per_image")
    return {"image AUROC": rounded.get("image_auroc"), "pixel AUROC": rounded.get("pixel_auroc"),
            "AUPRO": rounded.get("aupro"), "ms / image": None if speed is None else round(speed, 1)}


def metric_rows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per model (ModelEntry): metrics and speed as recorded at training."""
    rows = []
    for entry in entries:
        row = entry.row()
        row.pop("file", None)
        row.pop("created", None)  # the table must fit beside the heatmaps: date and file are on the Train page
        row["device"] = entry.metrics.get("device", "—")
        row["test images"] = entry.metrics.get("n_test")
        rows.append(row)
    return rows


def evaluation_row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A row of metrics measured now (same keys as metric_rows' metric columns)."""
    return {"name": name, **metric_cells(metrics), "device": metrics.get("device", "—"),
            "test images": metrics.get("n_test")}


def backbone_cost_rows(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The backbone cost table as the Train page shows it: parameters and mult-adds in millions, ms per image."""
    return [{"backbone": cost["backbone"], "input side": cost["resolution"],
             "parameters (M)": round(cost["parameters"] / 1e6, 2), "mult-adds (M)": round(cost["mult_adds"] / 1e6),
             "ms / image": cost["ms_per_image"] if cost["ms_per_image"] is not None else "—"} for cost in costs]



def width_by_height(working: str) -> str:
    """A size the cost measurement writes height × width ('256 × 640', '8 tiles of 224 × 224') written width ×
    height, as every page of the app writes sizes ('640 × 256')."""
    return re.sub(r"(\d+) × (\d+)", r"\2 × \1", working)


def resize_mode_cost_rows(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resize-mode cost table as the Train page shows it (sizes width × height)."""
    return [{"resize mode": cost["mode"], "the backbone sees (width × height)": width_by_height(cost["working"]),
             "image inspected": f"{cost['inspected_fraction']:.0%}", "pixels (k)": round(cost["pixels"] / 1000),
             "features (MiB)": cost["feature_mib"],
             "ms / image": cost["ms_per_image"] if cost["ms_per_image"] is not None else "—"} for cost in costs]
