"""A backbone × input-side sweep for the bench: what each point costs (ms/image) and what it finds (AUROC, AUPRO).

`python -m inspection bench … --backbones A B --sides 128 160 …` runs every method spec at every backbone and
side; this module turns a side into the preprocessing settings that make the backbone see it (whatever the
method's resize mode on that category), and writes the sweep's own table (sweep.md) and plot (sweep.png).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..device import under_load
from ..features.cost import backbone_cost

#: The centre crop keeps the default's 256→224 margin at every side.
_CROP_MARGIN = 256 / 224


def side_settings(resize_mode: str, side: int, resize: int = 256) -> dict[str, str]:
    """The geometry settings under which the backbone sees `side` pixels: the square's side (full frame, centre
    crop: the crop keeps the default's margin), the shorter side (aspect) or the tile's side (tiles: the image
    keeps its shorter side `resize`, enlarged when a tile would not fit)."""
    if resize_mode == "center_crop":
        return {"resize": str(round(side * _CROP_MARGIN)), "crop": str(side)}
    if resize_mode == "tiles":
        return {"crop": str(side), "resize": str(max(side, resize))}
    return {"resize": str(side), "crop": str(side)}  # full: crop is the square; aspect: resize is the shorter side


def expand_grid(own_settings: dict[str, str], resize_mode: str, backbones: Sequence[str],
                sides: Sequence[int], resize: int = 256) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(settings of the run, the settings that name its row) for every backbone × side, under the run's resize
    mode and shorter side; the spec alone without a grid."""
    grid = []
    for backbone in backbones or [None]:
        for side in sides or [None]:
            settings, label = dict(own_settings), dict(own_settings)
            if backbone:
                settings["backbone"] = label["backbone"] = backbone
            if side:
                settings.update(side_settings(resize_mode, side, resize))
                label["side"] = str(side)
            grid.append((settings, label))
    return grid


def row_side(row: dict[str, Any]) -> int:
    """The side the backbone saw in a bench row (the shorter side in aspect mode, the tile in tiles mode)."""
    preprocessing = row["preprocessing"]
    return int(preprocessing["resize"] if preprocessing["mode"] == "aspect" else preprocessing["crop"])


def backbone_mult_adds(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(parameters, mult-adds of one side×side image) of each backbone × side in the rows (the whole network,
    head included, as the MobileNet paper counts them)."""
    return {(backbone, side): _counted(backbone, side)
            for backbone, side in {(row["backbone"], row_side(row)) for row in rows if row.get("backbone", "-") != "-"}}


@cache
def _counted(backbone: str, side: int) -> tuple[int, int]:
    cost = backbone_cost(backbone, side, measure=False)
    return cost.parameters, cost.mult_adds


def run_variant(row: dict[str, Any]) -> str:
    """The run's label without the grid's own settings (side, backbone): "patchcore (layers=16,32)" for the row
    "patchcore (layers=16,32, side=192)", so that two variants of one method stay apart in the table and plot."""
    label = row.get("label", row["method"])
    name, _, inside = label.partition(" (")
    kept = [part for part in inside.rstrip(")").split(", ") if part and not part.startswith(("side=", "backbone="))]
    return f"{name} ({', '.join(kept)})" if kept else name


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per run, grouped by category and method variant, sorted by backbone and side."""
    costs = backbone_mult_adds(rows)
    lines = ["| category | method | backbone | side | params M | mult-adds M | image AUROC | pixel AUROC | AUPRO | "
             "ms/img b1 | ms/img b16 | fit s | peak MiB |", "|" + "---|" * 13]
    for row in sorted(rows, key=lambda r: (r["category"], run_variant(r), r["backbone"], row_side(r))):
        parameters, mult_adds = costs.get((row["backbone"], row_side(row)), (0, 0))
        flag = " ⚠" if under_load(row) else ""
        lines.append(f"| {row['category']} | {run_variant(row)} | {row['backbone']} | {row_side(row)} | "
                     f"{parameters / 1e6:.1f} | {mult_adds / 1e6:.0f} | {row['image_auroc']:.4f} | "
                     f"{row['pixel_auroc']:.4f} | {row['aupro']:.4f} | {row['predict_ms_per_image']:.1f}{flag} | "
                     f"{row['predict_ms_per_image_batch16']:.1f} | {row['fit_seconds']:.1f} | "
                     f"{row['peak_memory_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def method_and_backbone(row: dict[str, Any]) -> str:
    """The sweep plot's default series: one line per method variant × backbone."""
    return f"{run_variant(row)} · {row['backbone']}"


def sweep_plot(rows: Sequence[dict[str, Any]], path: Path,
               series: Callable[[dict[str, Any]], str] = method_and_backbone, title: str = "") -> None:
    """Accuracy against ms/image (batch 1): one panel per category × metric, one line per series (method ×
    backbone by default), each point labelled with its side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = sorted({row["category"] for row in rows})
    metrics = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
    figure, axes = plt.subplots(len(categories), len(metrics), figsize=(5 * len(metrics), 4 * len(categories)),
                                squeeze=False)
    # Colour by backbone, line style by method variant, so that a variant's lines and a backbone's lines are told
    # apart.
    colours = {backbone: f"C{index}" for index, backbone in enumerate(sorted({row["backbone"] for row in rows}))}
    variants = sorted({run_variant(row) for row in rows})
    styles = {variant: ("-o", "--s", ":^", "-.D")[index % 4] for index, variant in enumerate(variants)}
    names = sorted({series(row) for row in rows})
    for row_index, category in enumerate(categories):
        for column, (key, metric_title) in enumerate(metrics):
            axis = axes[row_index][column]
            for index, name in enumerate(names):
                members = [row for row in rows if row["category"] == category and series(row) == name]
                if not members:
                    continue
                points = sorted((row_side(row), row["predict_ms_per_image"], row[key]) for row in members)
                colour = colours[members[0]["backbone"]] if series is method_and_backbone else f"C{index}"
                axis.plot([p[1] for p in points], [p[2] for p in points], styles[run_variant(members[0])],
                          color=colour, label=name)
                for side, milliseconds, value in points:
                    axis.annotate(str(side), (milliseconds, value), textcoords="offset points", xytext=(3, 3),
                                  fontsize=7)
            axis.set_xlabel("ms per image (batch 1, CPU)")
            axis.set_ylabel(metric_title)
            axis.set_title(f"{category}: {metric_title}")
            axis.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for axis in axes.flat:  # every series once, from whichever panel drew it
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.suptitle(title or "Accuracy against speed: each point one backbone at one input side (the number "
                    "beside it)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_sweep(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """sweep.md and sweep.png for the rows of a sweep (those that name a side)."""
    swept = [row for row in rows if row.get("side")]
    if not swept:
        return
    (out / "sweep.md").write_text(sweep_table(swept))
    sweep_plot(swept, out / "sweep.png")
