"""Teach a saved model that an image is good (or a defect of a named type), undo the last decision, read the history.

A good image is, in turn: checked (the size, channel count and kind of picture of the training images — a picture
of another part is refused, not learned); scored; then either put in the calibration set, for a seeded share of
the taught images (`CALIBRATION_SHARE`: images taught as good show new conditions, and the threshold's
split-conformal promise must stand on them too), or learned by the method (`AnomalyModel.learn_good`), or, for a
method that cannot learn without a refit, kept in the model's good set for the next one. The model file is
rewritten once, atomically, under a lock on its folder: a page reading it meanwhile sees the old model or the new
one, never half of one, and two teachers never lose each other's decisions.

Once the method has learned an image, the whole calibration set is scored again by the taught model, from the
features the model file keeps of it (`AnomalyModel.rescore_heldout`): the fit's held-out good images, and the images
taught into the calibration set, whose features are kept when they join it (`AnomalyModel.keep_heldout_image`). The
threshold is set again on those scores: the promise rests on the scores the model gives now, one score function for
every image behind it. Kept at the fit's scores, PatchCore's threshold stayed where it was while its scores fell,
and a taught model lost defects it had caught (bench/teach/); PaDiM's scores of good images may rise as well as
fall. Without kept features (files made before, or over `heldout.MAX_MIB`), or once a recalibration replaced the
calibration set, the scores stay as they are.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import image_channels
from ..errors import TeachingError
from ..model import modes
from ..model.base import IMAGE_KINDS_KEY, TEACHING_KEY, AnomalyModel
from ..model.batching import decode, item_name, iter_batches
from ..model.calibration import Calibration
from ..model.header import ModelInfo
from ..model.modelfile import read_model_header, resolve_model_path
from ..registry import load_model
from ..scores.thresholds import conformal_threshold
from .decisions import CALIBRATION, DEFECT, GOOD, KEPT_FOR_REFIT, LEARNED, LIBRARY, Decision

#: The share of the images taught as good that goes to the calibration set instead of being learned (seeded: which
#: ones follows from the model's seed and their order). One in five: enough for new conditions to weigh on the
#: threshold after a few decisions, while four in five teach the method.
CALIBRATION_SHARE = 0.2


@dataclass
class Taught:
    """What teaching one image did: its decision, or why nothing changed (`unchanged`)."""

    name: str
    decision: Decision | None
    unchanged: str = ""  # why nothing changed (the image was taught before)


def teach(path: str | os.PathLike, images: Sequence[Any], action: str = GOOD, *, defect_type: str = "",
          who: str | None = None) -> list[Taught]:
    """Teach a model file that `images` (paths or RGB arrays) are good, or defects of `defect_type`; the file is
    rewritten once, atomically, when anything changed. Raises TeachingError, changing nothing, when one of the
    images cannot be taught."""
    if action not in (GOOD, DEFECT):
        raise TeachingError(f"a decision is {GOOD!r} or {DEFECT!r}, not {action!r}")
    defect_type = defect_type.strip()
    if action == DEFECT and not defect_type:
        raise TeachingError("a defect needs a type name (e.g. crack)")
    who = (who or "").strip() or _os_user()
    path = resolve_model_path(path)
    with _locked(path):
        model = load_model(path)
        entry = dict(model.info.extra.get(TEACHING_KEY) or {})
        decisions = decisions_in(model.info)
        state = dict(entry.get("state", {}))
        outcomes = []
        for item in images:
            outcome = _teach_one(model, item, action, defect_type, who, decisions, state)
            outcomes.append(outcome)
            if outcome.decision is not None:
                decisions.append(outcome.decision)
        if any(outcome.decision is not None for outcome in outcomes):
            _store(model, decisions, state)
            model.save(path)
    return outcomes


def undo(path: str | os.PathLike) -> Decision:
    """Undo the latest decision in force: the model's tensors and calibration become exactly those before it."""
    path = resolve_model_path(path)
    with _locked(path):
        model = load_model(path)
        entry = model.info.extra.get(TEACHING_KEY) or {}
        decisions = decisions_in(model.info)
        if not decisions:
            raise TeachingError(f"{path.name}: nothing was taught to this model: there is nothing to undo")
        last = decisions.pop()
        if last.learned:
            model.unlearn(last.learned)
        if last.calibration_before is not None:
            model.calibration = Calibration.from_dict(last.calibration_before)
        if last.heldout_kept:
            model.forget_heldout_image(last.heldout_kept)
        _store(model, decisions, dict(entry.get("state", {})))
        model.save(path)
    return last


def history(path: str | os.PathLike) -> list[Decision]:
    """The decisions in force, oldest first (from the file's header: the tensors are not read)."""
    return decisions_in(read_model_header(path).info)


def decisions_in(info: ModelInfo) -> list[Decision]:
    """The decisions in force that a model's info records, oldest first."""
    entry = info.extra.get(TEACHING_KEY) or {}
    return [Decision.from_dict(values) for values in entry.get("decisions", [])]


def defect_library(path: str | os.PathLike) -> list[dict[str, str]]:
    """The model's labelled defects: content hash, file name and type of each image taught as a defect."""
    return [{"image_hash": decision.image_hash, "image_name": decision.image_name, "type": decision.defect_type}
            for decision in history(path) if decision.action == DEFECT]


def library_images(decisions: Sequence[Decision]) -> list[tuple[str, str]]:
    """(file, type) of each defect in the library whose file is still on disk (an upload is kept by the app)."""
    return [(decision.image_path, decision.defect_type) for decision in decisions
            if decision.action == DEFECT and decision.image_path and Path(decision.image_path).is_file()]


def library_scores(model: AnomalyModel) -> list[tuple[str, float]]:
    """(type, raw score) of each defect in the model's library still on disk, scored by the model."""
    images = library_images(decisions_in(model.info))
    if not images:
        return []
    scores = model.predict([image for image, _ in images]).raw_scores
    return [(defect_type, float(score)) for (_, defect_type), score in zip(images, scores)]


def library_recall(model: AnomalyModel, threshold: float | None = None) -> dict[str, dict[str, int]]:
    """Per defect type of the model's library: how many of its images (still on disk) the model calls defects at
    `threshold` (raw; default the saved one) — {type: {"caught", "total"}}, {} without a library."""
    scores = library_scores(model)
    if not scores:
        return {}
    flagged = model.calibration.is_defect(np.array([score for _, score in scores]), threshold=threshold)
    return caught_by_type([defect_type for defect_type, _ in scores], flagged)


def caught_by_type(types: Sequence[str], flagged: Sequence[bool]) -> dict[str, dict[str, int]]:
    """{type: {"caught", "total"}} of defects of `types`, `flagged` by a threshold (one per defect)."""
    recall: dict[str, dict[str, int]] = {}
    for defect_type, caught in zip(types, flagged):
        counts = recall.setdefault(defect_type, {"caught": 0, "total": 0})
        counts["caught"] += int(caught)
        counts["total"] += 1
    return recall


def taught_good_images(path: str | os.PathLike) -> list[str]:
    """The files taught as good that the method keeps for its next refit (those it could not learn)."""
    return [decision.image_path for decision in history(path)
            if decision.action == GOOD and decision.use == KEPT_FOR_REFIT and decision.image_path]


# ----------------------------------------------------------------------------------------------------------------


def _teach_one(model: AnomalyModel, item: Any, action: str, defect_type: str, who: str,
               decisions: list[Decision], state: dict[str, Any]) -> Taught:
    name = item_name(item)
    array = decode(item)
    _check_kind(model, item, array, name)
    image_hash = _pixels_hash(array)
    for earlier in decisions:
        if earlier.image_hash == image_hash:
            if earlier.action == action and earlier.defect_type == defect_type:
                return Taught(name, None, f"{name} was taught as {_said(earlier)} already ({earlier.when}): nothing "
                                          "changed")
            raise TeachingError(f"{name} was taught as {_said(earlier)} ({earlier.when}); undo that decision "
                                "before teaching it otherwise")
    calibration = model.calibration
    prediction = model.predict([array])
    if prediction.unlike_training[0]:
        raise TeachingError(f"{name} is unlike the model's training images (a picture of another part or category, "
                            "a blank or a test pattern): it cannot be taught to this model")
    raw_before = float(prediction.raw_scores[0])
    before = float(calibration.image_scale.normalize(raw_before))
    n_good = sum(decision.action == GOOD for decision in decisions)
    learned: dict[str, Any] = {}
    calibration_before = heldout_kept = None
    if action == DEFECT:
        use = LIBRARY
    elif _goes_to_calibration(n_good, model.seed):
        use = CALIBRATION
        calibration_before = calibration.to_dict()
        model.calibration = _with_scores(calibration, [*calibration.heldout_scores, raw_before],
                                         [*calibration.heldout_files, name])
        heldout_kept = model.keep_heldout_image(array)  # learning later scores it again, with the held-out images
    elif model.teach_refusal():
        use = KEPT_FOR_REFIT
    else:
        use = LEARNED
        with torch.no_grad():
            learned = model.learn_good(_as_fitted(model, array), state)
        rescored = model.rescore_heldout()
        if rescored is not None:  # the calibration set as the taught model scores it
            calibration_before = calibration.to_dict()
            model.calibration = _with_scores(calibration, [*rescored, *calibration.heldout_scores[len(rescored):]],
                                             calibration.heldout_files)
    raw_after = float(model.predict([array]).raw_scores[0]) if use == LEARNED else raw_before
    decision = Decision(
        id=f"{len(decisions) + 1}-{image_hash[:8]}", action=action, image_hash=image_hash, image_name=name,
        when=datetime.now(timezone.utc).isoformat(timespec="seconds"), who=who, score_before=round(before, 6),
        score_after=round(float(model.calibration.image_scale.normalize(raw_after)), 6), use=use,
        defect_type=defect_type if action == DEFECT else "",
        image_path=str(Path(item).resolve()) if isinstance(item, (str, os.PathLike)) else "",
        learned=learned, calibration_before=calibration_before, heldout_kept=heldout_kept)
    return Taught(name, decision)


def _check_kind(model: AnomalyModel, item: Any, array: np.ndarray, name: str) -> None:
    """Refuse an image of another size or channel count than the model's training images."""
    kinds = model.info.extra.get(IMAGE_KINDS_KEY) or {}
    height, width = array.shape[:2]
    sizes = kinds.get("sizes")
    if sizes and [height, width] not in sizes:
        said = ", ".join(f"{w}×{h}" for h, w in sizes[:4]) + (" …" if len(sizes) > 4 else "")
        raise TeachingError(f"{name} is {width}×{height} pixels; the model's training images were {said}: teach it "
                            "pictures taken as its training images were")
    channels = kinds.get("channels")
    if channels and isinstance(item, (str, os.PathLike)):
        found = image_channels(item)
        if found not in channels:
            raise TeachingError(f"{name} has {_channels_said(found)}; the model's training images had "
                                f"{' or '.join(_channels_said(count) for count in channels)}: teach it pictures "
                                "taken as its training images were")


def _channels_said(count: int) -> str:
    return {1: "1 channel (grayscale)", 3: "3 channels (colour)"}.get(count, f"{count} channels")


def _said(decision: Decision) -> str:
    return f"a defect ({decision.defect_type})" if decision.action == DEFECT else "good"


def _pixels_hash(array: np.ndarray) -> str:
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _goes_to_calibration(n_good_before: int, seed: int) -> bool:
    """Whether the next image taught as good (after `n_good_before` of them) goes to the calibration set: a seeded
    offset, then one in every 1/CALIBRATION_SHARE images, so that any k taught images hold k·share ± 1 of them."""
    offset = np.random.default_rng([seed, 25]).random()
    return math.floor((n_good_before + 1) * CALIBRATION_SHARE + offset) > math.floor(
        n_good_before * CALIBRATION_SHARE + offset)


def _with_scores(calibration: Calibration, scores: Sequence[float], files: Sequence[str]) -> Calibration:
    """The calibration with the set `files` scored `scores` (raw), its image threshold set again by its own rule (a
    threshold chosen by hand stays as it was)."""
    scores, files = [float(score) for score in scores], list(files)
    if calibration.image_set_by_hand:
        return replace(calibration, heldout_scores=scores, heldout_files=files)
    conformal = conformal_threshold(scores, calibration.image_fpr)
    return replace(calibration.with_thresholds(conformal.threshold), heldout_scores=scores, heldout_files=files,
                   image_promise=conformal.describe())


def _as_fitted(model: AnomalyModel, array: np.ndarray) -> torch.Tensor:
    """The image as fitting saw the good images: normalised, at the working size, on the device (tiles: every
    tile)."""
    tensor = next(iter(iter_batches([array], model.preprocessing, 1)))[0].to(model.torch_device)
    if model.preprocessing.mode == "tiles":
        return torch.cat(list(modes.tiles(tensor, model.preprocessing.crop, model.preprocessing.tile_overlap,
                                          model.batch_size)))
    return tensor


def _store(model: AnomalyModel, decisions: list[Decision], state: dict[str, Any]) -> None:
    """Decisions in force go into the model's info; with none left the entry goes, so the header is the original."""
    if decisions:
        model.info.extra[TEACHING_KEY] = {"decisions": [decision.to_dict() for decision in decisions],
                                          "state": state}
    else:
        model.info.extra.pop(TEACHING_KEY, None)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the model's folder for a read-modify-write of the file (two teachers queue)."""
    if not path.is_file():
        raise TeachingError(f"model file {str(path)!r} does not exist")
    handle = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without /etc/passwd entry
        return ""
