"""One self-contained HTML report of a batch (`report.html`): summary counts, the model and its threshold, the score
histogram with the threshold line, heatmap overlays of the flagged images and of the worst ones, and every file's
row.

Self-contained: the styles are inline, every picture is embedded as a small base64 JPEG or PNG and the histogram is
inline SVG, so the one file can be mailed or archived and opens anywhere, offline. Nothing is loaded from elsewhere
(its Content-Security-Policy forbids it), and every text that comes from outside — file names, error messages,
the model's name — is HTML-escaped.

Memory stays bounded however many images were scored: only the pictured rows (the highest scores) get a picture,
one small thumbnail each, taken from the overlay `predict` wrote or, when there is none, drawn by scoring that
image again (a second pass over those few images only).
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.images import load_image
from ..errors import ImageLoadError
from ..model.scorer import Scorer
from ..results.image import DISPLAY_MAX_SIDE, VERDICT_WORDS, image_result
from ..results.numbers import score_text
from ..results.pictures import DEFECT_COLOR, GOOD_COLOR, THRESHOLD, colorbar
from ..scores.histogram import histogram_range
from .batch import BatchSummary

REPORT_NAME = "report.html"
#: The worst images pictured by default (every flagged one is pictured too, up to MAX_PICTURES).
DEFAULT_WORST = 12
#: Pictures in one report at most: with thousands of defects the page stays a few megabytes.
MAX_PICTURES = 200
THUMBNAIL_SIDE = 320


@dataclass(frozen=True)
class Picture:
    """A pictured row of the batch and its heatmap overlay as a small RGB thumbnail (None: the file is gone)."""

    row: dict[str, Any]
    image: np.ndarray | None


@dataclass(frozen=True)
class Report:
    """A written report: where, and the pictures it shows (highest score first)."""

    path: Path
    pictures: tuple[Picture, ...]


def ranked(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scored rows, highest score first (ties in input order)."""
    return sorted((row for row in rows if not row.get("error")), key=lambda row: -row["score"])


def pictured_rows(rows: Sequence[dict[str, Any]], worst: int = DEFAULT_WORST,
                  limit: int = MAX_PICTURES) -> list[dict[str, Any]]:
    """The rows a report pictures: every flagged one and at least the `worst` highest scores, `limit` at most.
    Flagged images are those of the highest scores, so this is one run of the ranking."""
    order = ranked(rows)
    flagged = sum(row["verdict"] == "defect" for row in order)
    return order[:min(max(worst, flagged), limit)]


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A copy of an RGB image shrunk to at most `side` on its longer side (never enlarged)."""
    height, width = image.shape[:2]
    factor = side / max(height, width)
    if factor >= 1:
        return image.copy()
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _read_overlay(path: Path) -> np.ndarray | None:
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    return None if picture is None else thumbnail(picture[:, :, ::-1])


def report_pictures(model: Scorer, rows: Sequence[dict[str, Any]], out: Path, worst: int = DEFAULT_WORST,
                    batch_size: int = 8) -> list[Picture]:
    """Thumbnails of the pictured rows: the overlay file in `out` when there is one, else the image scored again
    (a few at a time: only thumbnails are kept)."""
    chosen = pictured_rows(rows, worst)
    pictures: dict[int, np.ndarray] = {}
    missing = []
    for index, row in enumerate(chosen):
        picture = _read_overlay(out / row["overlay"]) if row.get("overlay") else None
        if picture is None:
            missing.append(index)
        else:
            pictures[index] = picture
    for start in range(0, len(missing), batch_size):
        images, indices = [], []
        for index in missing[start:start + batch_size]:
            try:
                images.append(load_image(chosen[index]["path"], max_side=DISPLAY_MAX_SIDE))
                indices.append(index)
            except (ImageLoadError, OSError):
                continue  # removed or broken since it was scored: the report says "no picture"
        if images:
            prediction = model.predict(images)
            for position, index in enumerate(indices):
                result = image_result(prediction, position, images[position], chosen[index]["file"])
                pictures[index] = thumbnail(result.overlay())
    return [Picture(row, pictures.get(index)) for index, row in enumerate(chosen)]


def data_uri(image: np.ndarray, kind: str = "jpeg") -> str:
    """An RGB image as a data: URI (JPEG for photos, PNG for flat pictures such as a colour bar)."""
    extension, options = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]) if kind == "jpeg" else (".png", [])
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image[:, :, ::-1]), options)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} picture as {kind}")
    return f"data:image/{kind};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def histogram_svg(rows: Sequence[dict[str, Any]], threshold: float = THRESHOLD, n_bins: int = 40,
                  width: int = 720, height: int = 260) -> str:
    """The scored rows' scores as an inline SVG histogram, good and defect verdicts stacked, the threshold as a
    dashed line; scores beyond the far-out fence are counted in the legend, not drawn."""
    scored = ranked(rows)
    scores = np.array([row["score"] for row in scored], dtype=np.float64)
    defect = np.array([row["verdict"] == "defect" for row in scored], dtype=bool)
    low, limit = histogram_range(scores, threshold)
    limit = max(limit, low + 1e-9)
    edges = np.linspace(low, limit, n_bins + 1)
    shown = np.isfinite(scores) & (scores <= limit)
    good_counts = np.histogram(scores[shown & ~defect], edges)[0]
    defect_counts = np.histogram(scores[shown & defect], edges)[0]
    tallest = max(1, int((good_counts + defect_counts).max(initial=0)))
    left, right, top, bottom = 48, 16, 14, 52
    plot_width, plot_height = width - left - right, height - top - bottom

    def x_of(value: float) -> float:
        return left + (value - low) / (limit - low) * plot_width

    def y_of(count: float) -> float:
        return top + plot_height - count / tallest * plot_height

    # Inline SVG in HTML needs no namespace: the page names no address at all.
    parts = [f'<svg role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" class="histogram"><title>Histogram of the anomaly scores</title>',
             f'<line x1="{left}" y1="{top + plot_height}" x2="{left + plot_width}" y2="{top + plot_height}" '
             'stroke="#495057"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_height}" stroke="#495057"/>']
    for index in range(n_bins):
        x0, x1 = x_of(edges[index]), x_of(edges[index + 1])
        bar_width = max(0.5, x1 - x0 - 1)
        base = 0
        for count, color in ((good_counts[index], GOOD_COLOR), (defect_counts[index], DEFECT_COLOR)):
            if count:
                parts.append(f'<rect x="{x0:.1f}" y="{y_of(base + count):.1f}" width="{bar_width:.1f}" '
                             f'height="{y_of(base) - y_of(base + count):.1f}" fill="{color}" opacity="0.8">'
                             f'<title>{edges[index]:.3f} … {edges[index + 1]:.3f}: {count}</title></rect>')
                base += count
    for value in np.linspace(low, limit, 5):
        parts.append(f'<text x="{x_of(value):.1f}" y="{top + plot_height + 16}" text-anchor="middle">'
                     f'{value:.2f}</text>')
    for count in (0, tallest):
        parts.append(f'<text x="{left - 6}" y="{y_of(count) + 4:.1f}" text-anchor="end">{count}</text>')
    line_x = x_of(threshold)
    parts.append(f'<line x1="{line_x:.1f}" y1="{top}" x2="{line_x:.1f}" y2="{top + plot_height}" stroke="#1c7ed6" '
                 'stroke-width="2" stroke-dasharray="6 4"/>')
    parts.append(f'<text x="{line_x + 4:.1f}" y="{top + 10}" fill="#1c7ed6">threshold {threshold:g}</text>')
    beyond = int((np.isfinite(scores) & (scores > limit)).sum())
    legend = (f'<tspan fill="{GOOD_COLOR}">■</tspan> good ({int((~defect).sum())}) '
              f'<tspan fill="{DEFECT_COLOR}">■</tspan> defect ({int(defect.sum())})'
              + (f" · {beyond} beyond {limit:.2f} not drawn" if beyond else "") + " · anomaly score (0.5 = threshold)")
    parts.append(f'<text x="{left}" y="{height - 10}">{legend}</text></svg>')
    return "".join(parts)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #212529; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #dee2e6; padding-bottom: .3rem; }
.meta { color: #495057; }
.counts { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.count { border: 1px solid #dee2e6; border-radius: 8px; padding: .6rem 1rem; min-width: 7rem; }
.count b { display: block; font-size: 1.6rem; }
.histogram text { font-size: 12px; fill: #343a40; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #dee2e6; border-radius: 8px; padding: .5rem; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: .85rem; margin-top: .3rem; overflow-wrap: anywhere; }
.none { color: #868e96; font-style: italic; padding: 2rem 0; text-align: center; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border-bottom: 1px solid #dee2e6; padding: .3rem .5rem; text-align: left; white-space: nowrap; }
td.text { white-space: normal; overflow-wrap: anywhere; }
th { background: #f8f9fa; position: sticky; top: 0; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.defect { color: DEFECT_COLOR; font-weight: 600; } .good { color: GOOD_COLOR; }
.colorbar { max-width: 420px; width: 100%; height: 14px; display: block; }
.scale { display: flex; justify-content: space-between; max-width: 420px; font-size: .8rem; color: #495057; }
""".replace("DEFECT_COLOR", DEFECT_COLOR).replace("GOOD_COLOR", GOOD_COLOR)
# Nothing from elsewhere may load, whatever the page holds: pictures only as data: URIs, no script at all.
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(label: str, value: int) -> str:
    return f'<div class="count"><b>{value}</b>{_escape(label)}</div>'


def _figure(picture: Picture) -> str:
    row = picture.row
    name = _escape(row["file"])
    regions = f" · {row['regions']} region{'s' if row['regions'] != 1 else ''}" if row["verdict"] == "defect" else ""
    caption = (f'{name}<br><span class="{row["verdict"]}">{VERDICT_WORDS.get(row["verdict"], row["verdict"])}</span> · '
               f'score {score_text(row["score"])}{regions}')
    if picture.image is None:
        body = '<div class="none">no picture: the file is gone or changed</div>'
    else:
        body = f'<img src="{data_uri(picture.image)}" alt="heatmap of {name}">'
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def _table_row(number: int, row: dict[str, Any]) -> str:
    if row.get("error"):
        return (f'<tr><td class="number">{number}</td><td class="text">{_escape(row["file"])}</td>'
                f'<td class="number">—</td><td>unreadable</td><td class="number">—</td><td class="number">—</td>'
                f'<td class="text">{_escape(row["error"])}</td></tr>')
    verdict = row["verdict"]
    return (f'<tr><td class="number">{number}</td><td class="text">{_escape(row["file"])}</td>'
            f'<td class="number">{score_text(row["score"])}</td>'
            f'<td class="{verdict}">{VERDICT_WORDS.get(verdict, verdict)}</td>'
            f'<td class="number">{row["regions"]}</td><td class="number">{row["largest_region_area"]}</td>'
            "<td></td></tr>")


def report_html(model: Scorer, summary: BatchSummary, pictures: Sequence[Picture], model_name: str = "",
                inputs: Sequence[str] = ()) -> str:
    """The report as one HTML document (see the module's docstring)."""
    calibration = model.calibration
    if calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    rows = summary.rows
    name = model_name or model.info.display_name or model.name
    backbone = getattr(model, "backbone", None)
    described = f"{model.name}" + (f"/{backbone}" if backbone else "")
    flagged = summary.flagged
    shown_flagged = sum(picture.row["verdict"] == "defect" for picture in pictures)
    if flagged > shown_flagged:
        gallery_note = (f"The {len(pictures)} highest scores: {shown_flagged} of the {flagged} images judged defects "
                        f"(a report pictures {MAX_PICTURES} at most; every image is in the table below).")
    elif flagged and flagged == len(pictures):
        gallery_note = f"Every image judged a defect ({flagged}), highest score first."
    elif flagged:
        gallery_note = (f"Every image judged a defect ({flagged}), then the highest-scoring good ones: the "
                        f"{len(pictures)} highest scores.")
    else:
        gallery_note = f"No image was judged a defect; the {len(pictures)} highest scores."
    colour_max = calibration.colour_max
    bar = np.rot90(colorbar(height=256, width=14, vmax=colour_max), k=-1)  # vertical → horizontal, low on the left
    rest = ranked(rows) + [row for row in rows if row.get("error")]
    resumed = (f"{summary.skipped} of them were scored by an earlier run into the same folder with the same model "
               "and were not scored again." if summary.skipped else "")
    inputs_text = ", ".join(_escape(text) for text in inputs)
    document = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Inspection report · {_escape(name)}</title><style>{_STYLE}</style></head><body>",
        "<h1>Inspection report</h1>",
        f'<p class="meta">Model <b>{_escape(name)}</b> ({_escape(described)}) · threshold: a score above 0.5 is a '
        f"defect (0.5 is the model's saved image threshold, {calibration.image_threshold:.6g} raw) · "
        f"made {time.strftime('%Y-%m-%d %H:%M')}" + (f" · images from {inputs_text}" if inputs_text else "") + "</p>",
        '<section class="counts">', _count("files", len(rows)), _count("judged defects", flagged),
        _count("judged good", summary.scored - flagged), _count("unreadable", summary.failed),
        _count("from an earlier run", summary.skipped), "</section>",
        f"<p>{_escape(resumed)}</p>" if resumed else "",
        "<h2>Scores</h2>", histogram_svg(rows),
        "<h2>Flagged and worst images</h2>", f"<p>{_escape(gallery_note)}</p>",
        '<div class="grid">' + "".join(_figure(picture) for picture in pictures) + "</div>"
        if pictures else '<p class="none">No image could be scored.</p>',
        f'<p>Heatmap colours (0 calm, 0.5 the model\'s saved pixel threshold, {colour_max:.2g} a high score of its '
        f'defects):</p><img class="colorbar" src="{data_uri(np.ascontiguousarray(bar), "png")}" '
        'alt="colour scale of the heatmaps">'
        f'<div class="scale"><span>0</span><span>0.5 threshold</span><span>{colour_max:.2g}</span></div>',
        "<h2>All images</h2><p>Highest score first; unreadable files at the end.</p>",
        "<table><thead><tr><th>#</th><th>file</th><th>score</th><th>verdict</th><th>regions</th>"
        "<th>largest region (px)</th><th>error</th></tr></thead><tbody>",
        "".join(_table_row(number, row) for number, row in enumerate(rest, start=1)),
        "</tbody></table></body></html>"]
    return "\n".join(part for part in document if part)


def write_report(model: Scorer, summary: BatchSummary, path: Path | None = None, worst: int = DEFAULT_WORST,
                 model_name: str = "", inputs: Sequence[str] = (), batch_size: int = 8) -> Report:
    """Write the batch's HTML report (by default `report.html` beside its CSV); the pictures come back too."""
    path = path or summary.out / REPORT_NAME
    pictures = report_pictures(model, summary.rows, summary.out, worst, batch_size)
    text = report_html(model, summary, pictures, model_name=model_name, inputs=inputs)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a report
    return Report(path, tuple(pictures))
