"""Fill the tables of bench figures in README.md and docs/*.md from the bench's own result files.

A generated region is everything between a marker line and ``<!-- end table -->``:

    <!-- table: KIND SOURCE [SOURCE …] [columns=KEY,KEY,…] -->

    …written by this script, between blank lines…

    <!-- end table -->

SOURCE is a file path relative to the repository root (``bench/sweep/results.json``), optionally followed by
``#2`` or ``#1,3`` to keep only those rows of it (counted from 1, in the file's order). The rows of several sources
are taken in turn. The region is indented as its marker is (a table inside a list item). KIND is one of:

- ``results``: the bench's main table of the rows (``inspection.bench.run.markdown_table``, the table only);
- ``results+notes``: the same with the notes the bench writes under it (date, versions, what each column means);
- ``promise``: the threshold's promise against unseen good images (``inspection.bench.run.promise_table``);
- ``by-type``: image / pixel AUROC and AUPRO per defect type (``inspection.bench.run.by_type_table``);
- ``sweep``: the backbone × side table (``inspection.bench.sweep.sweep_table``, as the bench writes sweep.md);
- ``columns``: the rows with the columns named by ``columns=`` (``COLUMNS`` below), for tables that put runs of
  several bench folders side by side;
- ``compare``: two sources, the first run under one protocol and the second under another: each run of the
  second beside the same run (method, category) of the first;
- ``folder``: ``bench/predict_folder.json`` as ``bench/predict_folder.py`` writes it (``folder_memory_markdown``);
- ``channels-last``: ``bench/channels-last/results.json`` as ``bench/channels_last.py`` writes it;
- ``md``: the first Markdown table of a ``.md`` file a bench script wrote (for a script whose table is not a
  reusable function, e.g. ``bench/coreset/coreset.md``).

    python docs/tables.py            # rewrite every region
    python docs/tables.py --check    # exit 1 and show the difference when a region is not what it would write
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python docs/tables.py` from a plain checkout
    sys.path.insert(0, str(REPO))

from inspection.bench.run import (  # noqa: E402
    by_type_table,
    describe_preprocessing,
    folder_memory_markdown,
    markdown_table,
    promise_table,
)
from inspection.device import under_load  # noqa: E402

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- table: (?P<spec>.+?) -->[ \t]*$")
END = "<!-- end table -->"


def pages() -> list[Path]:
    """Every file that may hold generated regions."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


# ----------------------------------------------------------------------------------------------------------
# Sources


@cache
def _load(path: str) -> dict[str, Any]:
    return json.loads((REPO / path).read_text(encoding="utf-8"))


def _source(spec: str) -> tuple[str, list[int] | None]:
    path, _, rows = spec.partition("#")
    if not (REPO / path).is_file():
        raise ValueError(f"no file {path}")
    return path, [int(index) for index in rows.split(",")] if rows else None


def _rows(sources: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of every source, in turn (only the chosen ones where a source names rows)."""
    rows = []
    for spec in sources:
        path, chosen = _source(spec)
        every = _load(path)["results"]
        rows += every if chosen is None else [every[index - 1] for index in chosen]
    return rows


def _one(sources: Sequence[str], kind: str) -> str:
    if len(sources) != 1:
        raise ValueError(f"{kind} takes one source, not {len(sources)}")
    return _source(sources[0])[0]


# ----------------------------------------------------------------------------------------------------------
# Kinds


def _results(sources: Sequence[str], notes: bool) -> str:
    """markdown_table of one bench's rows: its table, and its notes when asked (never the promise and per-type
    tables it appends: they have kinds of their own)."""
    path = _one(sources, "results")
    report = _load(path)
    rows = _rows(sources)
    whole = markdown_table(rows, report["environment"], report.get("large_image"))
    tail = promise_table(rows) + by_type_table(rows)
    if not whole.endswith(tail):
        raise ValueError(f"{path}: markdown_table no longer ends with its promise and per-type tables")
    main = whole[:len(whole) - len(tail)].rstrip("\n")
    return main if notes else main.split("\n\n")[0]


def _sweep(sources: Sequence[str]) -> str:
    from inspection.bench.sweep import sweep_table

    environment = _load(_source(sources[0])[0])["environment"]
    table = sweep_table([row for row in _rows(sources) if row.get("side")])
    return (table + f"\nMeasured {environment['date']} with inspection {environment['inspection']}, torch "
            f"{environment['torch']}, {environment['cpu_threads']} CPU threads; ⚠: a run started or ended with a load "
            "above its cores.")


def _bank(row: dict[str, Any]) -> str:
    """PatchCore's memory bank in patches: as fitted when the row recorded it; else, in full-frame mode, its
    share of the good patches computed from the fit images and the stride-8 grid (marked ≈)."""
    shapes = row.get("learned_shapes") or {}
    if "memory_bank" in shapes:
        return f"{shapes['memory_bank'][0]:,}".replace(",", " ")
    params, preprocessing = row.get("params", {}), row["preprocessing"]
    if row["method"] == "patchcore" and preprocessing["mode"] == "full" and "coreset_ratio" in params:
        cells = (preprocessing["crop"] // 8) ** 2
        return "≈ " + f"{round(row['n_fit_images'] * cells * params['coreset_ratio']):,}".replace(",", " ")
    return "—"


def _fpr_at(target: float) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        for entry in row.get("fpr_unseen_good_by_target", []):
            if abs(entry["target"] - target) < 1e-9:
                low, high = entry["ci"]
                return f"{entry['fpr']:.1%} [{low:.1%}, {high:.1%}]"
        return "—"
    return cell


def _side(row: dict[str, Any]) -> str:
    from inspection.bench.sweep import row_side

    return str(row_side(row))


def _number(key: str, digits: int, flag: bool = False) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        value = row.get(key)
        if not isinstance(value, (int, float)):
            return "—"
        return f"{value:.{digits}f}" + (" ⚠" if flag and under_load(row) else "")
    return cell


#: The columns a `columns` table may name: key → (title, cell).
COLUMNS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "label": ("method", lambda row: str(row.get("label", row["method"]))),
    "category": ("category", lambda row: str(row["category"])),
    "backbone": ("backbone", lambda row: str(row.get("backbone", "-"))),
    "preprocessing": ("preprocessing", lambda row: describe_preprocessing(row["preprocessing"])),
    "side": ("side", _side),
    "image_auroc": ("image AUROC", _number("image_auroc", 4)),
    "pixel_auroc": ("pixel AUROC", _number("pixel_auroc", 4)),
    "aupro": ("AUPRO", _number("aupro", 4)),
    "defects_flagged": ("defects flagged", _number("defects_flagged", 2)),
    "region_recall": ("regions found", _number("region_recall", 2)),
    "false_boxes": ("false boxes / good", _number("false_boxes_per_good_image", 2)),
    "mask_iou": ("mask IoU", _number("mask_iou", 2)),
    "bank": ("bank (patches)", _bank),
    "fit_seconds": ("fit s", _number("fit_seconds", 1)),
    "total_seconds": ("fit+eval s", _number("total_seconds", 1)),
    "predict_ms_per_image": ("ms/img b1", _number("predict_ms_per_image", 1, flag=True)),
    "predict_ms_per_image_batch16": ("ms/img b16", _number("predict_ms_per_image_batch16", 1)),
    "peak_memory_mib": ("peak MiB", _number("peak_memory_mib", 0)),
    "fpr_5": ("unseen good flagged at the 5 % target", _fpr_at(0.05)),
}


def _columns(sources: Sequence[str], keys: Sequence[str]) -> str:
    unknown = [key for key in keys if key not in COLUMNS]
    if not keys or unknown:
        raise ValueError(f"columns= needs keys from {sorted(COLUMNS)}; unknown: {unknown}")
    lines = ["| " + " | ".join(COLUMNS[key][0] for key in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(COLUMNS[key][1](row) for key in keys) + " |" for row in _rows(sources)]
    lines.append("")
    lines.append("⚠: the run started or ended with a load above its cores: its seconds are upper bounds."
                 if any(under_load(row) for row in _rows(sources)) else "")
    return "\n".join(lines).rstrip("\n")


def _protocol_name(row: dict[str, Any]) -> str:
    return (row.get("protocol") or {}).get("name", "aligned")


def _compare(sources: Sequence[str]) -> str:
    if len(sources) != 2:
        raise ValueError("compare takes two sources: the first protocol's runs, then the second's")
    first, second = _rows(sources[:1]), _rows(sources[1:])
    key = lambda row: (row.get("label", row["method"]), row["category"])  # noqa: E731
    by_key = {key(row): row for row in first}
    before, after = _protocol_name(first[0]), _protocol_name(second[0])
    metrics = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
    lines = ["| method | category | " + " | ".join(f"{title} {before} → {after}" for _, title in metrics) + " |",
             "|" + "---|" * (2 + len(metrics))]
    for row in second:
        if key(row) not in by_key:
            raise ValueError(f"{sources[1]}: {key(row)} has no run in {sources[0]}")
        other = by_key[key(row)]
        lines.append(f"| {key(row)[0]} | {row['category']} | " + " | ".join(
            f"{other[metric]:.4f} → {row[metric]:.4f}" for metric, _ in metrics) + " |")
    return "\n".join(lines)


def _folder(sources: Sequence[str]) -> str:
    report = _load(_one(sources, "folder"))
    return folder_memory_markdown(report, report["environment"]).rstrip("\n")


def _channels_last(sources: Sequence[str]) -> str:
    path = _one(sources, "channels-last")
    spec = importlib.util.spec_from_file_location("bench_channels_last", REPO / "bench" / "channels_last.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = _load(path)
    return module.markdown(report["results"], report["environment"]).rstrip("\n")


def _markdown_file(sources: Sequence[str]) -> str:
    text = (REPO / _one(sources, "md")).read_text(encoding="utf-8").splitlines()
    start = next((index for index, line in enumerate(text) if line.startswith("|")), None)
    if start is None:
        raise ValueError(f"{sources[0]} holds no table")
    end = next((index for index in range(start, len(text)) if not text[index].startswith("|")), len(text))
    return "\n".join(text[start:end])


def render(spec: str) -> str:
    """The Markdown a marker's spec stands for (no indentation)."""
    kind, *words = spec.split()
    options = dict(word.split("=", 1) for word in words if "=" in word)
    sources = [word for word in words if "=" not in word]
    if not sources:
        raise ValueError(f"table {spec!r}: no source")
    if kind in ("results", "results+notes"):
        return _results(sources, notes=kind == "results+notes")
    if kind == "promise":
        return promise_table(_rows(sources)).strip("\n")
    if kind == "by-type":
        return by_type_table(_rows(sources)).strip("\n")
    if kind == "sweep":
        return _sweep(sources)
    if kind == "columns":
        return _columns(sources, options.get("columns", "").split(","))
    if kind == "compare":
        return _compare(sources)
    if kind == "folder":
        return _folder(sources)
    if kind == "channels-last":
        return _channels_last(sources)
    if kind == "md":
        return _markdown_file(sources)
    raise ValueError(f"table {spec!r}: unknown kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# Pages


def fill(text: str, where: str = "") -> str:
    """`text` with every generated region rewritten."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        index += 1
        found = MARKER.match(line)
        if not found:
            continue
        indent = found["indent"]
        end = next((at for at in range(index, len(lines)) if lines[at].strip() == END), None)
        if end is None:
            raise ValueError(f"{where}: '{line.strip()}' has no {END}")
        try:
            body = render(found["spec"])
        except (ValueError, KeyError, IndexError) as error:
            raise ValueError(f"{where}: {line.strip()}: {error}") from error
        # Blank lines around the table: inside a list item, a comment line right above a table would make both
        # one paragraph.
        out += ["", *(indent + row if row else "" for row in body.split("\n")), ""]
        out.append(lines[end])
        index = end + 1
    return "\n".join(out)


def regions(text: str) -> list[str]:
    """The specs of the generated regions of a page, in order."""
    return [found["spec"] for found in map(MARKER.match, text.split("\n")) if found]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a region is out of date")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        filled = fill(text, str(page.relative_to(REPO)))
        if filled == text:
            continue
        stale.append(page)
        name = str(page.relative_to(REPO))
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), filled.splitlines(True), name,
                                                       f"{name} (generated)"))
        else:
            page.write_text(filled, encoding="utf-8")
            print(f"rewrote the tables of {name}")
    if args.check and stale:
        print(f"\n{len(stale)} page(s) out of date with the bench's result files: run python docs/tables.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
