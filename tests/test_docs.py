"""The docs hold: every table of bench figures is what the bench's result files give (docs/tables.py), the README
stays a front door with the test command `.ci/run` reads, and every file under docs/ is a page of the nav (or a
tool the build leaves out). The strict MkDocs build itself is run by the test command, not here."""

from __future__ import annotations

import fnmatch
import importlib.util
import re

import pytest
import yaml

from conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"


def _tables():
    spec = importlib.util.spec_from_file_location("docs_tables", DOCS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return _tables()


# ----------------------------------------------------------------------------------------------------------
# (a) Generated tables


def test_every_generated_table_is_what_the_bench_files_give(tables, capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().out


def test_the_readme_and_the_benchmark_pages_have_generated_tables(tables):
    assert "results+notes bench/results.json" in tables.regions(README.read_text(encoding="utf-8"))
    for page in ("benchmarks.md", "magnetic-tile.md"):
        assert tables.regions((DOCS / page).read_text(encoding="utf-8")), page


#: A table of bench figures: a column of AUROC, AUPRO or ms/image, or a cell of a four-decimal score.
FIGURES = re.compile(r"\|\s*(image AUROC|pixel AUROC|AUPRO|ms/img[^|]*)\s*\||\|\s*[01]\.\d{4}\b")


def test_no_table_of_bench_figures_is_written_by_hand(tables):
    """A Markdown table with AUROC or ms/img columns, or four-decimal scores, lies inside a generated region."""
    by_hand = []
    for page in tables.pages():
        inside = False
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if tables.MARKER.match(line):
                inside = True
            elif line.strip() == tables.END:
                inside = False
            elif not inside and line.lstrip().startswith("|") and FIGURES.search(line):
                by_hand.append(f"{page.relative_to(REPO)}:{number}")
    assert by_hand == []


def test_check_mode_catches_a_changed_figure_and_the_generator_restores_it(tables):
    text = "intro\n  <!-- table: results bench/results.json -->\n  | stale |\n  <!-- end table -->\nafter"
    filled = tables.fill(text)
    assert filled != text and tables.fill(filled) == filled
    lines = filled.split("\n")
    assert lines[0] == "intro" and lines[-1] == "after" and lines[-2] == "  <!-- end table -->"
    assert lines[2] == lines[-3] == ""  # blank lines around the table
    assert all(line.startswith("  |") for line in lines[3:-3])  # indented as its marker (a table in a list item)
    assert "| patchcore | bottle | efficientnet_lite0 | 1.0000 |" in filled
    assert tables.fill(filled.replace("| 1.0000 |", "| 0.9999 |", 1)) == filled


def test_a_bad_marker_is_an_error_naming_it(tables):
    with pytest.raises(ValueError, match="no <!-- end table -->"):
        tables.fill("<!-- table: results bench/results.json -->\n| x |", "page.md")
    with pytest.raises(ValueError, match="unknown kind"):
        tables.fill("<!-- table: nonsense bench/results.json -->\n<!-- end table -->", "page.md")
    with pytest.raises(ValueError, match="no file"):
        tables.fill("<!-- table: results bench/missing/results.json -->\n<!-- end table -->", "page.md")


# ----------------------------------------------------------------------------------------------------------
# (b) The README


def test_the_readme_is_a_front_door():
    assert len(README.read_bytes()) <= 15_000


def test_the_readme_keeps_the_test_command_ci_reads():
    lines = README.read_text(encoding="utf-8").splitlines()
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1].startswith("```") and lines[marker + 3] == "```"
    # .ci/run: the first line after the marker that does not start with a backtick.
    command = next(line for line in lines[marker + 1:] if line and not line.startswith("`"))
    assert command == lines[marker + 2]
    assert "python3 -m pytest" in command and "python3 -m ruff check ." in command
    assert "python3 -m mkdocs build --strict" in command
    assert 'awk \'/<!-- test-command -->/' in (REPO / ".ci" / "run").read_text()


def test_the_readme_says_no_gpu_has_run_the_code():
    assert "No GPU has run this code yet" in README.read_text(encoding="utf-8")


def test_the_readme_links_into_the_docs_and_the_links_hold():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#]+)", text)
    assert targets and all((REPO / target).is_file() for target in targets), targets


# ----------------------------------------------------------------------------------------------------------
# (c) The nav


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_file_under_docs_is_in_the_nav_or_left_out_on_purpose():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is listed twice"
    excluded = [pattern.strip() for pattern in config.get("exclude_docs", "").splitlines() if pattern.strip()]
    files = [path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*")
             if path.is_file() and "__pycache__" not in path.parts]
    pages = sorted(name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in excluded))
    assert pages == sorted(nav)
    assert all(name.endswith(".md") for name in pages)
    assert {"docs/tables.py", "docs/hooks.py"} <= {f"docs/{name}" for name in files}
    assert config["theme"]["name"] == "material" and config.get("strict") is True


def test_the_site_is_ignored_by_git():
    assert "/site/" in (REPO / ".gitignore").read_text().splitlines()

