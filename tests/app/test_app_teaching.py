"""Teaching from the app (issue 25): "This part is good" and "This is a defect" where a verdict is shown (Home,
Inspect, the Threshold page's thumbnails, the Batch table), who decided, the history with its undo, what each
decision did in one line, and the version of the model every page names — through AppTest, and the logic of
`inspection_app.teach_view` without Streamlit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_testing import assert_clean, copy_model, demo_image, incoming_folder, run_page, train_small_model
from inspection.model.modelfile import read_model_header, save_thresholds
from inspection.registry import load_model
from inspection.teach.decisions import CALIBRATION, KEPT_FOR_REFIT, LEARNED, LIBRARY, Decision
from inspection.teach.teaching import _goes_to_calibration, history, teach
from inspection.workflows.refit import REFITTED_KEY
from inspection.workflows.train import train
from inspection_app import teach_view
from inspection_app.batch_view import readable_files, selected_files, still_offered, table
from inspection_app.compare_view import column_header
from inspection_app.jobs import MANAGER
from inspection_app.library import list_models
from inspection_app.live_view import scorer_version


@pytest.fixture(scope="module")
def small_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(demo_root, tmp_path_factory.mktemp("trained") / "small.safetensors")


@pytest.fixture(autouse=True)
def _user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The computer's user name the name field starts with."""
    monkeypatch.setattr(teach_view.getpass, "getuser", lambda: "floor-user")


def png(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/png")


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def _outcome(at: AppTest) -> str:
    """The one-line outcome of the last decision or undo (shown once, after the rerun it caused)."""
    shown = [box.value for box in [*at.success, *at.info] if "learned" in box.value or "Undone" in box.value
             or "calibration set" in box.value or "defect library" in box.value or "taught as" in box.value]
    assert len(shown) == 1, [box.value for box in [*at.success, *at.info]]
    return shown[0]


def _version(at: AppTest) -> str:
    return next(caption.value for caption in at.sidebar.caption if caption.value.startswith("Model version"))


# --------------------------------------------------------------------------------------------------- logic


def _decision(use: str, **values) -> Decision:
    fields = {"id": "1-abcdef12", "action": "good", "image_hash": "ab" * 32, "image_name": "/data/test/good/018.png",
              "when": "2026-12-06T14:07:39+00:00", "who": "ana", "score_before": 0.62, "score_after": 0.31,
              "use": use, **values}
    return Decision(**fields)


def test_each_decision_says_what_it_did_in_one_line() -> None:
    learned = _decision(LEARNED, learned={"rows_added": 5})
    assert teach_view.effect_line(learned, [learned]) == \
        "018.png: learned, 5 bank rows; score 0.620 → 0.310 — now below the threshold (0.5)"
    covered = _decision(LEARNED, learned={"rows_added": 0}, score_after=0.62)
    assert "0 bank rows" in teach_view.effect_line(covered, [covered]) and "stays 0.620" in \
        teach_view.effect_line(covered, [covered])
    calibration = _decision(CALIBRATION, score_after=0.58)
    assert teach_view.effect_line(calibration, [learned, calibration]).startswith(
        "018.png: kept in the calibration set (one in five images taught as good): the threshold now stands on 1 "
        "taught image;")
    kept = _decision(KEPT_FOR_REFIT, score_after=0.62)
    assert "kept for a refit — vae learns a good image only when it is fitted again" in \
        teach_view.effect_line(kept, [kept], "vae")
    defect = _decision(LIBRARY, action="defect", defect_type="crack")
    assert teach_view.effect_line(defect, [defect]) == "018.png: added to the defect library as 'crack' (score 0.620)"
    for line in (teach_view.effect_line(item, [item]) for item in (learned, covered, calibration, kept, defect)):
        assert "\n" not in line
    assert teach_view.history_line(learned) == ("018.png is good — learned, 5 bank rows; score 0.620 → 0.310 · ana, "
                                                "2026-12-06 14:07")
    assert teach_view.promise_backing([], None) is None


def test_an_upload_is_kept_under_the_data_folder_by_its_content(models: Path, demo_root: Path) -> None:
    data = demo_image(demo_root, "good").read_bytes()
    image = teach_view.Teachable("My Part (1).png", data=data)
    assert image.file.parent.parent == teach_view.taught_uploads_dir() == demo_root.parent / "taught"
    assert image.file.name == "My-Part-1.png" and not image.file.exists()
    assert image.written().read_bytes() == data
    assert teach_view.Teachable("other.png", data=data).file.parent == image.file.parent  # one folder per content
    assert teach_view.Teachable("x.png", path=demo_image(demo_root, "hole")).written() == demo_image(demo_root, "hole")


def test_the_version_names_the_decisions_and_undo_back_to_here_undoes_them_all(small_model: Path, demo_root: Path,
                                                                              tmp_path: Path) -> None:
    path = copy_model(small_model, tmp_path)
    untaught = teach_view.model_version(load_model(path))
    assert untaught.startswith("version ") and len(untaught) == len("version ") + teach_view.VERSION_CHARS
    files = [teach_view.Teachable(f"{index:03d}.png", path=demo_image(demo_root, "good", index)) for index in range(3)]
    lines = teach_view.teach_images(path, files, "good", who="ana")
    assert len(lines) == 3 and all(line.startswith(f"{index:03d}.png: ") for index, line in enumerate(lines))
    taught = load_model(path)
    assert teach_view.model_version(taught).endswith(" · taught 3") and teach_view.model_version(taught) != untaught
    decisions = teach_view.decisions_of(taught)
    assert [decision.who for decision in decisions] == ["ana"] * 3
    assert teach_view.taught_as(decisions, demo_image(demo_root, "good", 1)) is decisions[1]
    assert teach_view.taught_as(decisions, demo_image(demo_root, "hole")) is None
    undone = teach_view.undo_back_to(path, decisions[1].id)
    assert [decision.id for decision in undone] == [decisions[2].id, decisions[1].id]
    assert teach_view.undo_line(undone).startswith("Undone: 2 decisions (002.png, 001.png)")
    assert [decision.id for decision in history(path)] == [decisions[0].id]
    with pytest.raises(Exception, match="no longer in force"):
        teach_view.undo_back_to(path, decisions[2].id)
    teach_view.undo_back_to(path, decisions[0].id)
    assert teach_view.model_version(load_model(path)) == untaught  # every decision undone: the model as it was


def test_a_rewritten_model_file_always_gets_a_new_modification_time(small_model: Path, tmp_path: Path) -> None:
    path = copy_model(small_model, tmp_path)
    before = path.stat().st_mtime_ns
    with teach_view.new_version(path):
        pass  # nothing written: the time moves all the same, so no cache serves the file's earlier version
    assert path.stat().st_mtime_ns > before


def test_the_batch_table_column_and_selection(small_model: Path, demo_root: Path, tmp_path: Path) -> None:
    from inspection.workflows.batch import collect_inputs, score_files

    folder = tmp_path / "incoming"
    folder.mkdir()
    for kind in ("good", "hole"):
        shutil.copyfile(demo_image(demo_root, kind), folder / f"{kind}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    model = load_model(small_model)
    summary = score_files(model, collect_inputs([folder]), tmp_path / "out", 4)
    frame = table(summary, {"good.png": "good: learned"})
    assert list(frame.columns[:4]) == ["file", "score", "verdict", "taught"]
    assert frame.set_index("file")["taught"].to_dict() == {"hole.png": "", "good.png": "good: learned",
                                                          "broken.png": ""}
    assert sorted(readable_files(summary)) == ["good.png", "hole.png"]
    assert selected_files(frame, [0, 2, 9]) == ["hole.png"]  # the unreadable row and rows out of range are left out
    assert still_offered(["good.png", "gone.png"], ["good.png"]) == ["good.png"]
    assert "taught" not in table(summary).columns


def test_compare_and_live_name_the_version(small_model: Path) -> None:
    entry = list_models(small_model.parent)[0][0]
    model = load_model(small_model)
    assert column_header(entry, teach_view.model_version(model)).endswith(f"  \n{teach_view.model_version(model)}")
    assert scorer_version(model) == teach_view.model_version(model) and scorer_version(None) == ""


# -------------------------------------------------------------------------------------------------- pages


def test_home_this_part_is_good_then_undo(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app.py", home_origin="dataset", home_sample="test/hole/000.png")
    assert_clean(at)
    assert at.sidebar.text_input(key=teach_view.WHO_KEY).value == "floor-user"  # the computer's user name first
    untaught = _version(at)
    assert "taught" not in untaught
    caption = next(caption.value for caption in at.caption if caption.value.startswith("Threshold 0.5 (saved)"))
    assert caption.endswith(untaught.removeprefix("Model "))  # the score names the version that made it
    before = float(_metrics(at)["Anomaly score"])
    at.sidebar.text_input(key=teach_view.WHO_KEY).set_value("Ana Inspector").run()
    good_button = next(button for button in at.button if button.key.startswith("teach-good-home-0-"))
    good_button.click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert (decision.who, decision.action, decision.use) == ("Ana Inspector", "good", LEARNED)  # seed 0: learned
    assert decision.learned["rows_added"] > 0  # a hole's patches are new to the bank
    assert _outcome(at).startswith(f"000.png: learned, {decision.learned['rows_added']} bank rows; score "
                                   f"{before:.3f} → ")
    after = float(_metrics(at)["Anomaly score"])  # scored again: the taught model, not a cached one
    assert after < before and after == pytest.approx(decision.score_after, abs=1e-3)
    assert _version(at).endswith(" · taught 1")
    assert any(caption.value.startswith(":material/school: Taught good by Ana Inspector: learned")
               for caption in at.caption)
    assert not [button for button in at.button if button.key.startswith("teach-good-home-0-")]
    assert any(f"000.png is good — learned, {decision.learned['rows_added']} bank rows" in markdown.value
               for markdown in at.sidebar.markdown)
    at.button(key=f"teach-undo-{decision.id}").click().run()
    assert_clean(at)
    assert _outcome(at) == "Undone: 000.png taught as good — the model is as it was before it."
    assert history(path) == [] and _version(at) == untaught
    assert float(_metrics(at)["Anomaly score"]) == pytest.approx(before, abs=1e-3)


def test_home_an_upload_is_a_defect_of_a_type_and_an_image_of_another_size_is_one_line(models: Path,
                                                                                       small_model: Path,
                                                                                       demo_root: Path,
                                                                                       tmp_path: Path) -> None:
    path = copy_model(small_model, models)
    small = tmp_path / "small.png"
    Image.fromarray(np.asarray(Image.open(demo_image(demo_root, "good")).convert("RGB"))[:64, :64]).save(small)
    at = run_page("app.py")
    at.file_uploader(key="home_upload").set_value([png(demo_image(demo_root, "scratch")), png(small)]).run()
    assert_clean(at)
    keys = sorted(widget.key for widget in at.text_input if widget.key.startswith("teach-type-home-"))
    assert len(keys) == 2
    defect_button = at.button(key=keys[0].replace("teach-type-", "teach-defect-"))
    assert defect_button.disabled  # a defect needs a type name
    at.text_input(key=keys[0]).set_value("scratch").run()
    at.button(key=keys[0].replace("teach-type-", "teach-defect-")).click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert (decision.action, decision.defect_type, decision.use) == ("defect", "scratch", LIBRARY)
    kept = Path(decision.image_path)
    assert kept.parent.parent == teach_view.taught_uploads_dir() and kept.read_bytes() == \
        demo_image(demo_root, "scratch").read_bytes()
    assert _outcome(at) == f"000.png: added to the defect library as 'scratch' (score {decision.score_before:.3f})"
    next(button for button in at.button if button.key.startswith("teach-good-home-1-")).click().run()
    assert not at.exception
    errors = [error.value for error in at.error]
    assert len(errors) == 1 and errors[0].startswith("This cannot be taught: small.png is 64×64 pixels")
    assert "\n" not in errors[0] and len(history(path)) == 1


def test_inspect_teaching_changes_the_score_shown_and_the_name_is_remembered_across_pages(
        models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    at = run_page("app.py")  # the app's own navigation: the session lives on from page to page
    at.sidebar.text_input(key=teach_view.WHO_KEY).set_value("Bo").run()
    at.session_state["inspect_type"] = "hole"
    at.switch_page("app_pages/4_Inspect.py").run()
    assert_clean(at)
    before = float(_metrics(at)["Anomaly score"])
    scored_by = next(caption.value for caption in at.caption if caption.value.startswith("Scored by small"))
    assert "taught" not in scored_by and "version " in scored_by
    type_field = next(widget for widget in at.text_input if widget.key.startswith("teach-type-inspect-"))
    assert type_field.value == "hole"  # a defect's type is suggested from its folder
    next(button for button in at.button if button.key.startswith("teach-good-inspect-")).click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert decision.who == "Bo" and decision.use == LEARNED
    after = float(_metrics(at)["Anomaly score"])
    assert after < before and after == pytest.approx(decision.score_after, abs=1e-3)
    assert any(caption.value.startswith("Scored by small") and caption.value.endswith("taught 1 · threshold 0.5 "
                                                                                      "(saved)")
               for caption in at.caption)
    at.switch_page("app_pages/3_Threshold.py").run()
    assert_clean(at)
    assert at.sidebar.text_input(key=teach_view.WHO_KEY).value == "Bo"


def test_threshold_false_alarm_thumbnails_teach_and_the_promise_counts_taught_images(models: Path,
                                                                                     small_model: Path) -> None:
    path = copy_model(small_model, models)
    header = read_model_header(path)
    good_scores = sorted((record["score"] for record in header.info.test_scores if record["label"] == 0),
                         reverse=True)
    save_thresholds(path, image_threshold=(good_scores[4] + good_scores[5]) / 2)  # five false alarms
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    assert any("5 false alarm(s)" in header.value for header in at.subheader)
    good_buttons = [button for button in at.button if button.key.startswith("teach-good-test/good/")]
    assert len(good_buttons) == 5
    assert not any("Taught images backing the promise" in caption.value for caption in at.caption)
    first = good_buttons[0].key.removeprefix("teach-good-")
    good_buttons[0].click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert decision.image_path == str((Path(header.info.data_path) / first).resolve())
    assert decision.use == (CALIBRATION if _goes_to_calibration(0, header.params["seed"]) else LEARNED)
    assert _outcome(at).startswith(f"{Path(first).name}: ")
    assert len([button for button in at.button if button.key.startswith("teach-good-test/good/")]) == 4
    assert any(caption.value.startswith(":material/school: Taught good by floor-user") for caption in at.caption)
    assert any("before the 1 decision(s) taught since" in caption.value for caption in at.caption)
    held_out = len(header.calibration.heldout_scores)
    assert any(caption.value.startswith(f"Taught images backing the promise: 0 of the {held_out} held-out good")
               for caption in at.caption)
    # Three more, taught elsewhere (the command line): with the model's seed the fourth goes to the calibration set.
    rest = [Path(header.info.data_path) / name.removeprefix("teach-good-") for name in
            (button.key for button in at.button if button.key.startswith("teach-good-test/good/"))][:3]
    teach(path, rest, "good", who="cli")
    uses = [decision.use for decision in history(path)]
    assert uses.count(CALIBRATION) == sum(_goes_to_calibration(count, header.params["seed"]) for count in range(4))
    at.run()
    assert_clean(at)
    backing = uses.count(CALIBRATION)
    assert any(caption.value.startswith(f"Taught images backing the promise: {backing} of the "
                                        f"{held_out + backing} held-out good")
               and caption.value.endswith("The held-out images are scored by the model as taught.")
               for caption in at.caption)
    assert _version(at).endswith(" · taught 4")
    oldest = history(path)[0]
    at.button(key=f"teach-undo-{oldest.id}").click().run()  # "Undo back to here" on the oldest: all four
    assert_clean(at)
    assert history(path) == [] and _outcome(at).startswith("Undone: 4 decisions")


def test_threshold_misses_are_taught_as_defects_of_their_type(models: Path, small_model: Path) -> None:
    path = copy_model(small_model, models)
    header = read_model_header(path)
    lowest_defect = min(record["score"] for record in header.info.test_scores if record["label"] == 1)
    save_thresholds(path, image_threshold=lowest_defect + 1e-6)  # the lowest-scoring defect is missed
    at = run_page("app_pages/3_Threshold.py")
    assert_clean(at)
    defect_buttons = [button for button in at.button if button.key.startswith("teach-defect-test/")]
    kind = defect_buttons[0].key.split("/")[1]
    # A thumbnail's column is narrow: the short label, the type in its help.
    assert defect_buttons[0].label == "Defect" and f"This is a defect ({kind})" in defect_buttons[0].help
    defect_buttons[0].click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert (decision.action, decision.defect_type, decision.use) == ("defect", kind, LIBRARY)


def test_batch_rows_taught_as_good_keep_the_table_with_a_note(models: Path, small_model: Path, demo_root: Path,
                                                              tmp_path: Path) -> None:
    path = copy_model(small_model, models)
    folder = incoming_folder(demo_root, tmp_path / "incoming")
    at = run_page("app_pages/6_Batch.py")
    at.text_input(key="batch_folder").set_value(str(folder)).run()
    at.button(key="batch_start").click().run()
    assert_clean(at)
    scored_by = next(caption.value for caption in at.caption if caption.value.startswith("Model **small**"))
    assert "version " in scored_by and "taught" not in scored_by
    assert at.button(key="teach-good-batch").disabled  # nothing chosen yet
    at.multiselect(key="batch_teach_files").set_value(["stain.png"]).run()
    at.button(key="teach-good-batch").click().run()
    assert_clean(at)
    decision = history(path)[0]
    assert decision.image_path == str((folder / "stain.png").resolve()) and decision.use == LEARNED
    assert _outcome(at).startswith("stain.png: learned")
    frame = at.dataframe[0].value.set_index("file")
    assert frame.loc["stain.png", "taught"] == "good: learned" and frame.loc["hole.png", "taught"] == ""
    assert any("These scores are those of version" in info.value and "taught 1" in info.value for info in at.info)
    at.button(key="batch_start").click().run()  # scored again with the taught model: the note goes
    assert_clean(at)
    assert not any("These scores are those of" in info.value for info in at.info)
    assert at.dataframe[0].value.set_index("file").loc["stain.png", "score"] == pytest.approx(
        decision.score_after, abs=1e-3)


def test_live_names_the_version_it_scores_with_and_says_when_the_model_changed(models: Path, small_model: Path,
                                                                              demo_root: Path) -> None:
    from inspection_app import live_view

    path = copy_model(small_model, models)
    model = load_model(path)
    live_view.LIVE.start(live_view.LiveRequest(model_path=str(path), source=str(demo_root / "test" / "good")),
                         scorer=model)
    try:
        at = run_page("app_pages/7_Live.py")
        assert_clean(at)
        assert any(markdown.value.endswith(f" · model {teach_view.model_version(model)}")
                   for markdown in at.markdown)
        teach(path, [demo_image(demo_root, "hole")], "good")
        at = run_page("app_pages/7_Live.py")
        assert any(caption.value.startswith("The model has changed since this pipeline started (now version ")
                   and "taught 1" in caption.value for caption in at.caption)
    finally:
        live_view.LIVE.stop()


def test_a_method_that_learns_only_by_fitting_offers_a_refit_in_the_background(models: Path, demo_root: Path) -> None:
    path = train("dfr", {"crop": 64, "resize": 64, "epochs": 1, "batch_positions": 512}, demo_root,
                 out=models / "dfr.safetensors", evaluate_test=False).path
    goods = sorted((demo_root / "test" / "good").glob("*.png"))[:2]  # other tests leave files beside them
    kept = [outcome.decision for outcome in teach(path, goods) if outcome.decision.use == KEPT_FOR_REFIT]
    assert kept
    at = run_page("app.py")
    assert_clean(at)
    offer = next(box.value for box in at.sidebar.info if "wait" in box.value)
    assert offer.startswith(f"{len(kept)} image") and "dfr learns a good image only when it is fitted again" in offer
    at.sidebar.button(key="teach-refit").click().run()
    assert_clean(at)
    latest = MANAGER.latest()
    assert latest is not None and MANAGER.wait(latest.job_id, timeout=300).status == "done"
    refitted = read_model_header(path)
    assert history(path) == [] and len(refitted.info.extra[REFITTED_KEY]) == len(kept)
    assert refitted.info.n_fit_images + refitted.info.n_heldout_images == \
        len(list((demo_root / "train" / "good").glob("*.png"))) + len(kept)
    at.run()
    assert_clean(at)
    assert not [box for box in at.sidebar.info if "wait" in box.value]


def test_the_threshold_page_counts_the_taught_defects_per_type_at_its_threshold() -> None:
    scores = [("crack", 3.0), ("crack", 1.0), ("scratch", 2.5)]
    assert teach_view.library_line([], 2.0) is None
    assert teach_view.library_line(scores, 2.0) == ("Taught defects caught at this threshold (the model's defect "
                                                    "library): crack 1/2, scratch 1/1.")
    assert teach_view.library_line(scores, 3.0).endswith("crack 0/2, scratch 0/1.")  # a defect iff above
