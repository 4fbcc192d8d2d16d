"""Folder inspection: `predict` resumes where an earlier run stopped, writes a per-file table and one self-contained
HTML report, keeps spreadsheets and browsers safe from file names, and the app's Batch page does the same."""

from __future__ import annotations

import csv
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_testing import copy_model, demo_image, run_page, train_small_model
from inspection.cli import main
from inspection.model.modelfile import update_header
from inspection.registry import load_model
from inspection.workflows.batch import CSV_NAME, STATE_NAME, collect_inputs, score_files
from inspection.workflows.report import MAX_PICTURES, REPORT_NAME, pictured_rows, write_report

# Names a spreadsheet would run as formulas, and one a browser would run as a script if it were not escaped.
FORMULA_NAMES = ("=1+2.png", "@SUM(A1).png", "+cmd.png", "-x.png")
SCRIPT_NAME = "<script>alert(1)<.script>.png"


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "small.safetensors")


def image_folder(demo_root: Path, folder: Path, goods: int = 3, holes: int = 2, names: tuple[str, ...] = ()) -> Path:
    """A folder of demo test images: good ones, ones with a hole, and copies under the given names."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(goods):
        shutil.copyfile(demo_image(demo_root, "good", index), folder / f"good_{index}.png")
    for index in range(holes):
        shutil.copyfile(demo_image(demo_root, "hole", index), folder / f"hole_{index}.png")
    for index, name in enumerate(names):
        shutil.copyfile(demo_image(demo_root, "hole", 5 + index), folder / name)
    return folder


def predict(*args: str) -> int:
    return main(["--quiet", "predict", *args])


# ---------------------------------------------------------------------------------------------- resuming


def test_a_second_run_skips_what_is_scored_and_says_so(small_model: Path, demo_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in"), tmp_path / "out"
    assert predict("--model", str(small_model), str(folder), "--out", str(out)) == 0
    first = capsys.readouterr().out
    assert first.startswith("scored 5 image(s):") and "skipped" not in first
    (folder / "new.png").write_bytes((folder / "good_0.png").read_bytes())
    assert predict("--model", str(small_model), str(folder), "--out", str(out)) == 0
    assert "scored 6 image(s) (5 already scored by an earlier run: skipped)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / CSV_NAME, encoding="utf-8")))
    assert [row["file"] for row in rows] == ["good_0.png", "good_1.png", "good_2.png", "hole_0.png", "hole_1.png",
                                             "new.png"]
    assert rows[3]["verdict"] == "defect" and int(rows[3]["largest_region_area"]) > 0
    assert rows[0]["verdict"] == "good" and rows[0]["regions"] == "0" and rows[0]["largest_region_area"] == "0"
    # A file changed since (another size or time) is scored again; --restart scores everything again.
    stat = (folder / "hole_1.png").stat()
    os.utime(folder / "hole_1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    model = load_model(small_model)
    assert score_files(model, collect_inputs([folder]), out, batch_size=4).skipped == 5
    assert score_files(model, collect_inputs([folder]), out, batch_size=4, resume=False).skipped == 0


def test_an_interrupted_run_goes_on_where_it_stopped(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in", goods=4, holes=2), tmp_path / "out"
    model, files = load_model(small_model), collect_inputs([folder])

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_files(model, files, out, batch_size=2, progress=stop_after_three)
    assert len(list(csv.DictReader(open(out / CSV_NAME, encoding="utf-8")))) == 3  # what was scored is written
    again = score_files(model, files, out, batch_size=2)
    assert (again.skipped, again.scored, again.failed) == (3, 6, 0)


def test_other_thresholds_score_everything_again(small_model: Path, demo_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in", goods=2, holes=1), tmp_path / "out"
    model = copy_model(small_model, tmp_path / "models")
    assert predict("--model", str(model), str(folder), "--out", str(out)) == 0
    update_header(model, lambda header: {**header, "calibration": {
        **header["calibration"], "image_threshold": header["calibration"]["image_threshold"] * 1.5}})
    capsys.readouterr()
    assert predict("--model", str(model), str(folder), "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.out and "another model or other thresholds" in captured.err
    assert (out / STATE_NAME).is_file()


# ------------------------------------------------------------------------------------------ the report


class _Links(HTMLParser):
    """Every src and href of a page, and every tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "action")]


def test_the_report_is_self_contained_and_escapes_file_names(small_model: Path, demo_root: Path,
                                                             tmp_path: Path) -> None:
    folder = image_folder(demo_root, tmp_path / "in", names=(SCRIPT_NAME,))
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert predict("--model", str(small_model), str(folder), "--out", str(out), "--report", "--worst", "4",
                   "--overlays", "defects") == 0
    text = (out / REPORT_NAME).read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert parser.links and all(link.startswith("data:image/") for link in parser.links)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;.script&gt;.png" in text
    # Pictures: the flagged images (the 3 holes, drawn from their overlays) and at least the 4 worst, so one good
    # image whose overlay was not written (--overlays defects) is drawn by scoring it again.
    assert text.count("data:image/jpeg;base64,") == 4
    assert "<svg" in text and "threshold 0.5" in text  # the histogram and its threshold line
    assert text.count("<tr>") == 1 + 7  # the header and every file, the unreadable one too
    assert "broken.png" in text and "unreadable" in text
    assert "<b>7</b>files" in text and "<b>3</b>judged defects" in text and "<b>1</b>unreadable" in text


def test_the_csv_neutralises_formulas(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in", goods=1, holes=0, names=FORMULA_NAMES), tmp_path / "out"
    assert predict("--model", str(small_model), str(folder), "--out", str(out)) == 0
    with open(out / CSV_NAME, encoding="utf-8", newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    for name in FORMULA_NAMES:
        assert "'" + name in cells and name not in cells
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)


def test_an_empty_folder_is_one_clear_error(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert predict("--model", str(small_model), str(empty), "--out", str(tmp_path / "out"), "--report") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and f"no images in {empty}" in error and "Traceback" not in error


def test_the_report_pictures_every_flagged_image_up_to_a_limit() -> None:
    rows = [{"file": f"{index}.png", "score": index / 100, "verdict": "defect" if index >= 50 else "good"}
            for index in range(400)]
    assert len(pictured_rows(rows, worst=12)) == MAX_PICTURES  # 350 flagged: capped
    assert [row["file"] for row in pictured_rows(rows[:40], worst=3)] == ["39.png", "38.png", "37.png"]
    assert len(pictured_rows(rows[:60], worst=3)) == 10  # every flagged one, more than the worst 3


def test_a_report_needs_no_overlay_files(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    folder, out = image_folder(demo_root, tmp_path / "in", goods=2, holes=2), tmp_path / "out"
    model = load_model(small_model)
    summary = score_files(model, collect_inputs([folder]), out, batch_size=4, overlays="none")
    assert not list(out.glob("*.png"))
    report = write_report(model, summary, worst=3)
    assert len(report.pictures) == 3
    assert {picture.row["file"] for picture in report.pictures[:2]} == {"hole_0.png", "hole_1.png"}
    assert all(picture.image is not None and max(picture.image.shape[:2]) <= 320 for picture in report.pictures)


# ----------------------------------------------------------------------------------------------- the page


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_root: Path) -> Path:
    """An empty models folder and a data folder of the test's own (batch results go there)."""
    folder = tmp_path / "models"
    folder.mkdir()
    data = tmp_path / "data"
    shutil.copytree(demo_root, data / demo_root.name)
    monkeypatch.setenv("INSPECTION_MODELS_DIR", str(folder))
    monkeypatch.setenv("INSPECTION_DATA_DIR", str(data))
    return folder


def run_batch_page(**state) -> AppTest:
    return run_page("app_pages/6_Batch.py", **state)


def test_the_batch_page_scores_a_folder_resumes_and_offers_the_downloads(models: Path, small_model: Path,
                                                                         demo_root: Path, tmp_path: Path) -> None:
    copy_model(small_model, models)
    folder = image_folder(demo_root, tmp_path / "incoming", names=(SCRIPT_NAME,))
    at = run_batch_page(batch_folder=str(folder), batch_worst=4)
    assert not at.exception and not at.error
    at.button(key="batch_start").click().run()
    assert not at.exception, [exception.value for exception in at.exception]
    assert not at.error, [error.value for error in at.error]
    metrics = {metric.label: metric.value for metric in at.metric}
    assert (metrics["Files"], metrics["Judged defects"], metrics["From an earlier run"]) == ("6", "3", "0")
    assert [button.label for button in at.get("download_button")] == ["Download the CSV", "Download the HTML report"]
    table = at.dataframe[0].value
    assert len(table) == 6 and table["score"].is_monotonic_decreasing
    assert set(table["verdict"]) == {"GOOD", "DEFECT"} and SCRIPT_NAME in set(table["file"])
    assert len(at.get("plotly_chart")) >= 1  # the histogram (and the colour bar)
    assert len(at.image) == 4  # the 4 worst as pictures
    at.button(key="batch_start").click().run()  # the same folder again: nothing scored twice
    assert not at.exception and not at.error
    assert {metric.label: metric.value for metric in at.metric}["From an earlier run"] == "6"


def test_the_batch_page_says_clearly_what_is_wrong_with_a_folder(models: Path, small_model: Path,
                                                                tmp_path: Path) -> None:
    copy_model(small_model, models)
    empty = tmp_path / "empty"
    empty.mkdir()
    for typed, expected in ((str(tmp_path / "nowhere"), "Folder not found: "), (str(empty), "no images in")):
        at = run_batch_page(batch_folder=typed)
        at.button(key="batch_start").click().run()
        assert not at.exception
        assert len(at.error) == 1 and expected in at.error[0].value
        assert not at.get("download_button")
