"""Teaching a model from the pages (`inspection.teach`): "This part is good" and "This is a defect" wherever a
verdict is shown, who decides (a name the app remembers, first the computer's user name), the decisions in force
with their undo, what each decision did in one line, and which version of the model scored an image.

The logic is plain functions (tested without Streamlit); the widgets below them are shared by the pages. Teaching
rewrites the model file: its modification time changes, and with it every cache key of the app (`caches`), so the
next scoring uses the taught model."""

from __future__ import annotations

import getpass
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from inspection.data.demo import default_demo_root
from inspection.errors import TeachingError
from inspection.model.base import AnomalyModel
from inspection.model.calibration import Calibration
from inspection.results.numbers import score_text
from inspection.teach.decisions import CALIBRATION, DEFECT, GOOD, KEPT_FOR_REFIT, LEARNED, LIBRARY, Decision
from inspection.teach.teaching import Taught, caught_by_type, decisions_in, history, teach, undo
from inspection.teach.teaching import library_scores as teaching_library_scores
from inspection.workflows.refit import refit_arguments

from .jobs import TrainingRequest
from .library import ModelEntry, slugify
from .page import kept_text_input, user_errors
from .training import start_training, training_running

#: The name field's session key: one name for every page of a browser session.
WHO_KEY = "teach_who"
#: Where a decision's one-line outcome waits for the rerun that shows it.
OUTCOME_KEY = "_teach_outcome"
#: Characters of the model's fingerprint the pages show as its version.
VERSION_CHARS = 8


# ------------------------------------------------------------------------------------------------- logic


def default_who() -> str:
    """The name a decision is recorded under until one is typed: the computer's user name ("" when unknown)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name (a container without an /etc/passwd entry)
        return ""


def taught_uploads_dir() -> Path:
    """Where uploaded images taught to a model are kept (under the data folder): a method that learns only by a
    refit reads them again then, and a decision names a real file."""
    return default_demo_root() / "taught"


def upload_path(name: str, data: bytes) -> Path:
    """The file an uploaded image is kept in when it is taught: one folder per content, the upload's name."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = Path(name).suffix.lower()
    return taught_uploads_dir() / digest / f"{slugify(Path(name).stem)}{suffix}"


@dataclass(frozen=True)
class Teachable:
    """An image a page can teach: a file (a dataset image, a file of a scored folder), or an upload's bytes (kept
    under the data folder when it is taught)."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def file(self) -> Path:
        """The image's file, as a decision records it (an upload's, before it is written)."""
        if self.path is not None:
            return Path(self.path)
        if self.data is None:
            raise ValueError("a teachable image is a file or an upload's bytes")
        return upload_path(self.name, self.data)

    def written(self) -> Path:
        """The image's file, writing an upload's bytes there first."""
        file = self.file
        if self.path is None and not file.is_file():
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(self.data or b"")
        return file


def decisions_of(model: AnomalyModel) -> list[Decision]:
    """The decisions in force in a loaded model, oldest first."""
    return decisions_in(model.info)


def model_version(model: AnomalyModel) -> str:
    """Which version of a model scores: its fingerprint, short, and "taught N" while decisions are in force."""
    taught = len(decisions_of(model))
    return f"version {model.fingerprint[:VERSION_CHARS]}" + (f" · taught {taught}" if taught else "")


def _resolved(path: str | Path) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return str(path)


def taught_as(decisions: Sequence[Decision], path: str | Path) -> Decision | None:
    """The decision in force about the image file `path`, if it was taught."""
    wanted = _resolved(path)
    for decision in decisions:
        if decision.image_path and _resolved(decision.image_path) == wanted:
            return decision
    return None


def short_name(decision: Decision) -> str:
    """The taught image's file name (decisions record the whole path)."""
    return Path(decision.image_name).name or decision.image_name


def calibration_count(decisions: Sequence[Decision]) -> int:
    """How many of the decisions put a taught image in the calibration set (it backs the threshold's promise)."""
    return sum(decision.use == CALIBRATION for decision in decisions)


def effect_line(decision: Decision, decisions: Sequence[Decision], method: str = "") -> str:
    """What one decision did, in one line; `decisions` are those in force after it (for the calibration count)."""
    name, before, after = short_name(decision), decision.score_before, decision.score_after
    if decision.use == LEARNED:
        rows = decision.learned.get("rows_added")
        if rows == 0:
            return (f"{name}: learned, 0 bank rows — the model's memory already covers every patch of this image, so "
                    f"its score stays {score_text(before)}")
        crossed = " — now below the threshold (0.5)" if before > 0.5 >= after else ""
        what = f"learned, {rows} bank rows" if rows is not None else "learned"
        return f"{name}: {what}; score {score_text(before)} → {score_text(after)}{crossed}"
    if decision.use == CALIBRATION:
        count = calibration_count(decisions)
        return (f"{name}: kept in the calibration set (one in five images taught as good): the threshold now stands "
                f"on {count} taught image{'s' if count != 1 else ''}; its score {score_text(before)} → "
                f"{score_text(after)} on the new threshold")
    if decision.use == KEPT_FOR_REFIT:
        return (f"{name}: kept for a refit — {method or 'this method'} learns a good image only when it is fitted "
                f"again; its score stays {score_text(before)}")
    if decision.use == LIBRARY:
        return f"{name}: added to the defect library as {decision.defect_type!r} (score {score_text(before)})"
    return f"{name}: {decision.use}; score {score_text(before)} → {score_text(after)}"


def outcome_lines(outcomes: Sequence[Taught], decisions: Sequence[Decision], method: str = "") -> list[str]:
    """One line per image taught: what its decision did, or why nothing changed."""
    return [effect_line(outcome.decision, decisions, method) if outcome.decision is not None else outcome.unchanged
            for outcome in outcomes]


def history_line(decision: Decision) -> str:
    """One decision in the history list: the image, what was decided and done, the scores, who and when."""
    what = f"defect ({decision.defect_type})" if decision.action == DEFECT else "good"
    rows = decision.learned.get("rows_added")
    use = f"{decision.use}, {rows} bank rows" if rows is not None else decision.use
    return (f"{short_name(decision)} is {what} — {use}; score {score_text(decision.score_before)} → "
            f"{score_text(decision.score_after)} · {decision.who or '?'}, {decision.when.replace('T', ' ')[:16]}")


def undo_back_to(path: str | Path, decision_id: str) -> list[Decision]:
    """Undo the decisions after `decision_id` and it, latest first (each exactly, by `inspection.teach.undo`);
    the decisions undone. TeachingError when it is no longer in force (undone meanwhile)."""
    if decision_id not in [decision.id for decision in history(path)]:
        raise TeachingError(f"decision {decision_id} is no longer in force (undone meanwhile?)")
    undone = []
    while True:
        with new_version(path):
            last = undo(path)
        undone.append(last)
        if last.id == decision_id:
            return undone


def undo_line(undone: Sequence[Decision]) -> str:
    """What an undo did, in one line."""
    if len(undone) == 1:
        decision = undone[0]
        return (f"Undone: {short_name(decision)} taught as "
                f"{'a defect' if decision.action == DEFECT else 'good'} — the model is as it was before it.")
    return (f"Undone: {len(undone)} decisions ({', '.join(short_name(decision) for decision in undone)}) — the "
            "model is as it was before them.")


def library_line(scores: Sequence[tuple[str, float]], raw_threshold: float) -> str | None:
    """Per type, how many of the model's taught defects (type, raw score) a threshold catches (None: no library)."""
    if not scores:
        return None
    counts = caught_by_type([defect_type for defect_type, _ in scores],
                            [score > raw_threshold for _, score in scores])  # the verdict's rule: above it
    said = ", ".join(f"{defect_type} {count['caught']}/{count['total']}"
                     for defect_type, count in sorted(counts.items()))
    return f"Taught defects caught at this threshold (the model's defect library): {said}."


@st.cache_data(show_spinner="Scoring the taught defects…", max_entries=8)
def library_scores(path: str, modified: float) -> list[tuple[str, float]]:
    """(type, raw score) of each defect in a model's library still on disk, scored by that version of the model."""
    from . import caches

    return teaching_library_scores(caches.cached_model(path, modified))


def promise_backing(decisions: Sequence[Decision], calibration: Calibration) -> str | None:
    """How many taught images back the image threshold's promise now (None while nothing is taught)."""
    if not decisions:
        return None
    count, held_out = calibration_count(decisions), len(calibration.heldout_scores)
    # A learned decision that changed the calibration scored the fit's held-out images again (`teach`).
    rescored = any(decision.use == LEARNED and decision.calibration_before is not None for decision in decisions)
    return (f"Taught images backing the promise: {count} of the {held_out} held-out good images it stands on "
            f"({len(decisions)} decision{'s' if len(decisions) != 1 else ''} in force; one in five images taught "
            "as good goes to the calibration set, the others are learned)."
            + (" The held-out images are scored by the model as taught." if rescored else ""))


@contextmanager
def new_version(path: str | Path) -> Iterator[None]:
    """Around a rewrite of a model file: make sure its modification time moves, even on a file system whose clock
    ticks coarsely — every cache key of the app holds it (`caches`), and the next scoring must load the new file."""
    path = Path(path)
    before = path.stat().st_mtime_ns if path.is_file() else None
    yield
    if before is not None and path.is_file():
        after = path.stat()
        if after.st_mtime_ns <= before:
            os.utime(path, ns=(after.st_atime_ns, before + 1_000_000))


def teach_images(path: str | Path, images: Sequence[Teachable], action: str, defect_type: str = "", who: str = "",
                 method: str = "") -> list[str]:
    """Teach a model file that `images` are good (or defects of `defect_type`), as `who`; one line per image."""
    uploads = {str(image.file): image.name for image in images if image.path is None}
    new = [image.file for image in images if image.path is None and not image.file.exists()]
    files = [image.written() for image in images]
    try:
        with new_version(path):
            outcomes = teach(path, files, action, defect_type=defect_type, who=who)
    except TeachingError as error:
        for file in new:  # an upload that was not taught leaves nothing behind
            file.unlink(missing_ok=True)
            if not any(file.parent.iterdir()):
                file.parent.rmdir()
        raise TeachingError(_upload_names(str(error), uploads)) from None
    return [_upload_names(line, uploads) for line in outcome_lines(outcomes, history(path), method)]


def _upload_names(text: str, uploads: dict[str, str]) -> str:
    """A message of the core with each upload named as the user named it, not by the file it is kept in."""
    for file, name in uploads.items():
        text = text.replace(file, name)
    return text


# ------------------------------------------------------------------------------------------------ widgets


def who_field(container: Any = None) -> str:
    """The name decisions are recorded under (remembered across pages; first the computer's user name)."""
    container = container or st.sidebar
    return kept_text_input(container, "Your name (recorded with what you teach)", WHO_KEY, default=default_who(),
                           help="Each decision — this part is good, this is a defect — is recorded in the model "
                                "file with this name, the time and the scores before and after.")


def _model(entry: ModelEntry) -> AnomalyModel | None:
    from . import caches

    try:
        return caches.model_of(entry)
    except Exception:  # noqa: BLE001 - the page says why the model cannot be used; the sidebar only leaves it out
        return None


def version_of(entry: ModelEntry) -> str:
    """The version of a models-folder entry (its loaded model's); "" when it cannot be loaded."""
    model = _model(entry)
    return model_version(model) if model is not None else ""


def _finish(entry: ModelEntry, lines: Sequence[str], kind: str = "success") -> None:
    st.session_state[OUTCOME_KEY] = {"model": str(entry.path), "lines": list(lines), "kind": kind}
    st.rerun()


def panel(entry: ModelEntry) -> None:
    """The sidebar's teaching block under the model picker — the version, the name field, the decisions in force
    with their undo — and, in the page, what the last decision or undo did (once, after the rerun it caused)."""
    outcome = st.session_state.pop(OUTCOME_KEY, None)
    if outcome and outcome.get("model") == str(entry.path) and outcome.get("lines"):
        show = st.success if outcome.get("kind") == "success" else st.info
        show("  \n".join(outcome["lines"]), icon=":material/school:")
    sidebar = st.sidebar
    model = _model(entry)
    if model is not None:
        sidebar.caption(f"Model {model_version(model)}", help="The model's fingerprint: its method, settings, "
                        "thresholds and the decisions taught to it. Every score names the version that made it.")
    who_field(sidebar)
    decisions = decisions_of(model) if model is not None else []
    with sidebar.expander(f"Taught decisions ({len(decisions)})", expanded=False):
        if not decisions:
            st.caption("Nothing taught yet. Press **This part is good** on a false alarm (or **This is a defect**) "
                       "where a verdict is shown.")
        for index in range(len(decisions) - 1, -1, -1):
            decision = decisions[index]
            later = len(decisions) - 1 - index
            st.markdown(f"**{index + 1}.** {history_line(decision)}")
            label = "Undo" if not later else f"Undo back to here ({later + 1} decisions)"
            if st.button(label, key=f"teach-undo-{decision.id}", icon=":material/undo:",
                         help="The model as it was before this decision" + (
                             f" and the {later} after it" if later else "") + ": tensors and thresholds exactly."):
                with user_errors():
                    _finish(entry, [undo_line(undo_back_to(entry.path, decision.id))], "info")
    waiting = sum(decision.use == KEPT_FOR_REFIT for decision in decisions)
    if waiting:
        refit_offer(entry, waiting, sidebar)


def refit_offer(entry: ModelEntry, waiting: int, container: Any) -> None:
    """A method that learns only by fitting says so, and offers the refit as a background training (the Train
    page's, one at a time) that replaces the model file with one fitted on its images and the taught ones."""
    container.info(f"{waiting} image{'s' if waiting != 1 else ''} taught as good wait{'s' if waiting == 1 else ''} "
                   f"for a refit: {entry.method} learns a good image only when it is fitted again.",
                   icon=":material/model_training:")
    if container.button("Refit in the background", key="teach-refit", icon=":material/refresh:",
                        disabled=training_running(), help="The same method and settings, fitted on the dataset's "
                        "training images and the taught ones; evaluated, then saved over this model. Follow it on "
                        "the Train page."):
        with user_errors():
            arguments = refit_arguments(entry.path)
            request = TrainingRequest(arguments["method"], arguments["params"], arguments["data"], None,
                                      arguments["out"], arguments["display_name"] or entry.name,
                                      extra_good=tuple(arguments["extra_good"]), record=arguments["record"])
            if start_training(request) is not None:
                _finish(entry, [f"Refit started with {waiting} taught image{'s' if waiting != 1 else ''}: follow it "
                                "on the Train page; the model keeps scoring as it is until the refit saves."], "info")


def _teach(entry: ModelEntry, images: Sequence[Teachable], action: str, defect_type: str = "") -> None:
    with user_errors():
        lines = teach_images(entry.path, images, action, defect_type, st.session_state.get(WHO_KEY, ""),
                             entry.method)
        _finish(entry, lines)


def decisions_for(entry: ModelEntry) -> list[Decision]:
    """The decisions in force in a models-folder entry's file ([] when its header cannot be read)."""
    try:
        return history(entry.path)
    except Exception:  # noqa: BLE001 - the page says why the model cannot be used
        return []


def taught_caption(decision: Decision) -> str:
    """What a page shows beside an image already taught."""
    what = f"a defect ({decision.defect_type})" if decision.action == DEFECT else "good"
    return f"Taught {what} by {decision.who or '?'}: {decision.use}"


def teach_buttons(entry: ModelEntry, image: Teachable, key: str, decisions: Sequence[Decision] = (), *,
                  good: bool = True, defect: bool = True, defect_type: str | None = None, suggested_type: str = "",
                  container: Any = None, compact: bool = False) -> None:
    """"This part is good" and "This is a defect" for one image (`key`: unique on the page). `defect_type`: the
    type a defect is taught as (no field asks for it), None for a field (first holding `suggested_type`). `compact`:
    "Good" and "Defect" (the rest in their help), for a thumbnail's narrow column, where the long labels were cut to
    "This part is g…". An image already taught says so instead."""
    container = container or st.container()
    earlier = taught_as(decisions, image.file)
    if earlier is not None:
        container.caption(f":material/school: {taught_caption(earlier)} (undo it in the sidebar)")
        return
    columns = container.columns(2 if good and defect else 1)
    if good and columns[0].button("Good" if compact else "This part is good", key=f"teach-good-{key}",
                                  icon=":material/thumb_up:",
                                  help="This part is good: teach the model so. It learns the part (its score drops), "
                                       "or one in five times the part joins the calibration set behind the "
                                       "threshold."):
        _teach(entry, [image], GOOD)
    if not defect:
        return
    target = columns[-1]
    if defect_type is not None:
        if target.button("Defect" if compact else f"This is a defect ({defect_type})", key=f"teach-defect-{key}",
                         icon=":material/flag:", help=f"This is a defect ({defect_type}): add the image to the "
                                                      "model's defect library under this type."):
            _teach(entry, [image], DEFECT, defect_type)
        return
    with target.popover("Defect" if compact else "This is a defect", icon=":material/flag:"):
        typed = st.text_input("Defect type", value=suggested_type, key=f"teach-type-{key}", placeholder="e.g. crack",
                              help="The type the image is added to the model's defect library under.")
        if st.button("Add to the defect library", key=f"teach-defect-{key}", disabled=not typed.strip()):
            _teach(entry, [image], DEFECT, typed)


def taught_words(decisions: Sequence[Decision], files: dict[str, Path]) -> dict[str, str]:
    """What was taught about some image files ({name: "good (learned)"}), for a table's column; `files` maps each
    row's name to its file."""
    words = {}
    for name, path in files.items():
        decision = taught_as(decisions, path)
        if decision is not None:
            what = f"defect ({decision.defect_type})" if decision.action == DEFECT else "good"
            words[name] = f"{what}: {decision.use}"
    return words


def teach_selected(entry: ModelEntry, images: Sequence[Teachable], key: str) -> None:
    """The two decisions for several images at once (a table's selected rows): the model file is rewritten once."""
    count = len(images)
    good_column, type_column, defect_column = st.columns([1, 1, 1], vertical_alignment="bottom")
    if good_column.button("This part is good" if count == 1 else f"These {count} parts are good",
                          key=f"teach-good-{key}", icon=":material/thumb_up:", disabled=not images,
                          help="Teach the model that the selected parts are good."):
        _teach(entry, images, GOOD)
    typed = type_column.text_input("Defect type", key=f"teach-type-{key}", placeholder="e.g. crack",
                                   help="The type the selected images are added to the defect library under.")
    if defect_column.button("This is a defect" if count <= 1 else f"These {count} are defects",
                            key=f"teach-defect-{key}", icon=":material/flag:",
                            disabled=not images or not typed.strip(),
                            help="Add the selected images to the model's defect library under the type typed."):
        _teach(entry, images, DEFECT, typed)
