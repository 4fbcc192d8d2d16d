"""Evaluating a fitted model on a dataset's test split, the field's way, and timing it honestly.

Metrics are computed at the working scale on each image's whole resized frame, against ground-truth masks
resized the same way (and, under a non-aligned protocol, moved as their images: `data/protocol.py`): every defect
pixel of the original counts, and one the model never saw (outside a centre crop) scores -inf, missed at every
threshold; good pixels it never saw are left out (no credit for not looking). `inspected_fraction` is the share
of the images' area the model saw. Speed is the median wall time per image of preprocessed images at batch size 1
and in batches of 16, after a warm-up, the anomaly map at input resolution included; decoding is timed apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.datasets import Dataset, load_sample_mask
from ..data.preprocess import map_to_frame
from ..device import describe_device
from ..model.base import AnomalyModel
from ..model.batching import decode
from ..model.calibration import Calibration
from ..progress import Progress, ProgressCallback
from ..scores.metrics import image_auroc, pixel_metrics, region_metrics, stack_ragged
from ..scores.thresholds import clopper_pearson, conformal_threshold, f1_optimal_threshold, score_quantiles


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)  # one per test image: file, label, type, score
    pixel_quantiles: dict[str, list[float]] = field(default_factory=dict)  # "good" / "defect" pixel scores
    pixel_counts: dict[str, int] = field(default_factory=dict)  # how many good / defect pixels they summarise
    f1_image_threshold: float | None = None
    f1_pixel_threshold: float | None = None


#: The larger batch size speed is measured at, beside batch size 1.
TIMING_BATCH = 16


def _median_ms(calls: Sequence[Callable[[], object]], warmup: int, budget_s: float, minimum: int,
               after_call: Callable[[], None] | None = None) -> float:
    """Median wall time of `calls` run in turn, in ms, after up to `warmup` of them; `after_call` runs after each
    call (warm-up ones too), outside the time measured.

    Warm-up stops early when it has taken a quarter of the budget (a slow call has nothing worth warming up),
    and measuring stops once the budget is spent and `minimum` calls were measured: a method that takes
    seconds per image is timed in a bounded time, a fast one on every call given.
    """
    started = time.perf_counter()
    for call in calls[:warmup]:
        call()
        if after_call is not None:
            after_call()
        if time.perf_counter() - started > budget_s / 4:
            break
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    for call in calls:
        if len(times) >= minimum and time.perf_counter() > deadline:
            break
        begun = time.perf_counter()
        call()  # predict_tensor returns numpy arrays: the device is synchronised inside
        times.append((time.perf_counter() - begun) * 1000)
        if after_call is not None:
            after_call()
    return statistics.median(times)


def time_prediction(model: AnomalyModel, items: Sequence[Any], repeats: int = 20, warmup: int = 3,
                    budget_s: float | None = None, progress: ProgressCallback | None = None) -> dict[str, float]:
    """Median ms per image: decoding alone, and prediction at batch size 1 and in batches of `TIMING_BATCH`.

    `budget_s` bounds each of the two measurements (default: a second per repeat, 20 s at the default 20); the
    batch is timed 3 times at 15 repeats or more, once (after its warm-up) under 10. `progress` hears "timing"
    after every call timed, counted in images predicted (a batch call is `TIMING_BATCH` of them), so a slow
    method's timing shows how far it is."""
    budget_s = float(repeats) if budget_s is None else budget_s
    items = list(items)
    single_count = min(repeats, len(items))
    batch_calls = min(3, max(1, repeats // 5))  # 3 at the default; a short timing measures one batch
    singles_end = min(warmup, single_count) + single_count  # at most this many single calls, warm-up included
    total, done, reported = singles_end + (1 + batch_calls) * TIMING_BATCH, 0, -1

    def report(step: int) -> None:
        nonlocal done, reported
        done = min(max(done, step), total)
        if progress is not None and done != reported:
            reported = done
            progress(Progress("timing", done, total))

    report(0)
    decode_ms, tensors = [], []
    for item in items[:max(repeats, TIMING_BATCH)]:
        started = time.perf_counter()
        image = decode(item)
        decode_ms.append((time.perf_counter() - started) * 1000)
        tensors.append(model.preprocessing.batch([image])[0])
    singles = tensors[:repeats]
    single_ms = _median_ms([lambda tensor=tensor: model.predict_tensor(tensor) for tensor in singles], warmup,
                           budget_s, minimum=min(3, len(singles)),
                           after_call=lambda: report(min(done + 1, singles_end)))
    report(singles_end)  # the budget may have cut the single calls short
    # Fewer images than a batch: the batch repeats them (speed does not depend on which images they are). A batch
    # holds images of one working size (aspect and tiles modes vary it): those of the first image's.
    same_size = [tensor for tensor in tensors if tensor.shape == tensors[0].shape]
    batch = torch.cat([same_size[index % len(same_size)] for index in range(TIMING_BATCH)])
    estimated_batch_s = single_ms * TIMING_BATCH / 1000
    batch_warmup = 1 if estimated_batch_s < budget_s / 4 else 0  # warming up a call of many seconds gains nothing
    if not batch_warmup:
        report(done + TIMING_BATCH)
    batch_ms = _median_ms([lambda: model.predict_tensor(batch)] * batch_calls, batch_warmup, budget_s, minimum=1,
                          after_call=lambda: report(done + TIMING_BATCH))
    report(total)
    return {"predict_ms_per_image": single_ms, f"predict_ms_per_image_batch{TIMING_BATCH}": batch_ms / TIMING_BATCH,
            "decode_ms_per_image": statistics.median(decode_ms)}


def evaluate(model: AnomalyModel, dataset: Dataset, progress: ProgressCallback | None = None,
             timing_repeats: int = 20) -> Evaluation:
    """Image AUROC, pixel AUROC and AUPRO on the test split; at the saved image threshold the share of defect images
    flagged; at the saved pixel threshold the region recall, false boxes per good image and mask IoU; F1-optimal
    thresholds, per-image scores, speed."""
    samples = dataset.test
    if not samples:
        raise ValueError(f"dataset {dataset.category!r} has no test images to evaluate on")
    sources = [sample.source for sample in samples]
    # An exported model (a `Scorer` of the torch-free runtime) reports no progress.
    prediction = model.predict(sources) if progress is None else model.predict(sources, progress=progress)
    labels = np.array([sample.label for sample in samples])
    metrics: dict[str, Any] = {"n_test": len(samples), "n_defect": int(labels.sum()),
                               "image_auroc": image_auroc(prediction.raw_scores, labels)}
    if not dataset.protocol.aligned:  # aligned evaluations stay as they were; others say what moved the images
        metrics["protocol"] = dataset.protocol.to_dict()

    with_masks = [index for index, sample in enumerate(samples) if sample.label == 0 or sample.mask_path]
    metrics["inspected_fraction"] = float(np.mean([geometry.inspected_fraction
                                                   for geometry in prediction.geometries]))
    frames, frame_masks = [], []
    for index in with_masks:
        geometry = prediction.geometries[index]
        frames.append(map_to_frame(prediction.raw_maps[index], geometry))
        frame_masks.append(model.preprocessing.frame_mask(
            load_sample_mask(samples[index], (geometry.original_height, geometry.original_width)), geometry))
    if frames:
        maps, masks, valid = stack_ragged(frames, frame_masks)
        # A good pixel the model never saw says nothing either way: it is left out, not counted as a correct
        # negative (that would reward looking at less). A defect pixel it never saw stays in, missed (-inf).
        valid &= np.isfinite(maps) | masks
    else:
        maps = np.zeros((0,) + model.preprocessing.size, np.float32)
        masks, valid = np.zeros(maps.shape, bool), np.zeros(maps.shape, bool)
    del frames, frame_masks
    if not dataset.protocol.aligned:
        # A move can take a whole defect out of view: the image stays a defect (as the field counts it), and how
        # many did, and the image AUROC without them, say how much of a drop that explains.
        out_of_view = {index for row, index in enumerate(with_masks)
                       if samples[index].label == 1 and not masks[row].any()}
        in_view = [index for index in range(len(samples)) if index not in out_of_view]
        metrics["protocol"].update(n_defect_masks_out_of_view=len(out_of_view), image_auroc_defects_in_view=(
            image_auroc(prediction.raw_scores[in_view], labels[in_view])))
    metrics.update(pixel_metrics(maps, masks, valid=valid))
    metrics["by_type"] = metrics_by_type(samples, labels, prediction.raw_scores, with_masks, maps, masks, valid)
    if model.calibration is not None and len(maps):
        # What an inspector sees at the saved pixel threshold: boxes found, false boxes, the mask's overlap.
        metrics.update(region_metrics(maps, masks, model.calibration.pixel_threshold))
    if model.calibration is not None:
        good = labels == 0
        if not good.all():  # what the saved image threshold catches: the verdict a line would give each defect
            metrics["defects_flagged"] = float(np.mean(model.calibration.is_defect(prediction.raw_scores[~good])))
        metrics.update(unseen_good_rates(model.calibration, prediction.raw_scores[good], prediction.raw_maps[good]))
    if prediction.familiarity is not None:
        metrics.update(unlike_training_rates(prediction, labels))
    evaluation = Evaluation(metrics)

    if masks.any():
        seen = np.isfinite(maps)  # quantiles and the F1 threshold describe the pixels the model scored
        evaluation.pixel_quantiles = {"good": score_quantiles(maps[~masks & seen]),
                                      "defect": score_quantiles(maps[masks & seen])}
        evaluation.pixel_counts = {"good": int((~masks & seen).sum()), "defect": int((masks & seen).sum())}
        evaluation.f1_pixel_threshold = _f1_pixel_threshold(maps[seen], masks[seen])
    if 0 < labels.sum() < len(labels):
        evaluation.f1_image_threshold = f1_optimal_threshold(prediction.raw_scores, labels)[0]
    evaluation.records = [
        {"file": str(sample.path.relative_to(dataset.root)), "label": sample.label, "type": sample.defect_type,
         "score": float(score)}
        for sample, score in zip(samples, prediction.raw_scores)]
    if timing_repeats:
        # The files as they are: a protocol's move is part of the data, not of what inspection costs.
        metrics.update(time_prediction(model, [sample.path for sample in samples], timing_repeats,
                                       progress=progress))
    device = getattr(model, "torch_device", None)
    metrics["device"] = describe_device(device) if device is not None else f"cpu ({model.runtime})"
    return evaluation


def unlike_training_rates(prediction: Any, labels: np.ndarray) -> dict[str, Any]:
    """How often the model's own test images are called unlike the training data (`model.familiarity`): all of
    them, with the 95 % interval, and the good and defect ones apart, beside the rate the check promises."""
    unlike = prediction.unlike_training
    count = int(unlike.sum())
    return {"unlike_training_rate": prediction.familiarity.promised_fpr,
            "unlike_training_own_test": count / len(unlike),
            "unlike_training_own_test_ci": list(clopper_pearson(count, len(unlike))),
            "unlike_training_own_good": float(np.mean(unlike[labels == 0])) if (labels == 0).any() else None,
            "unlike_training_own_defect": float(np.mean(unlike[labels == 1])) if (labels == 1).any() else None}


#: The image FPR targets whose promise is checked on unseen good images by every evaluation.
CHECKED_FPR_TARGETS = (0.01, 0.05, 0.10)


def metrics_by_type(samples: Sequence[Any], labels: np.ndarray, scores: np.ndarray, with_masks: list[int],
                    maps: np.ndarray, masks: np.ndarray, valid: np.ndarray) -> dict[str, dict[str, float]]:
    """Per defect type, its images against the good ones: image AUROC, pixel AUROC and AUPRO (the pixels of the
    good images and of that type's images only), so a set's weak type shows. Empty with fewer than two types."""
    types = np.array([sample.defect_type for sample in samples])
    defect_types = sorted(set(types[labels == 1]))
    if len(defect_types) < 2 or not (labels == 0).any():
        return {}
    rows = types[with_masks]
    result = {}
    for defect_type in defect_types:
        chosen = (labels == 0) | (types == defect_type)
        result[defect_type] = {"n_images": int((types == defect_type).sum()),
                               "image_auroc": image_auroc(scores[chosen], labels[chosen])}
        in_rows = (rows == "good") | (rows == defect_type)
        if masks[rows == defect_type].any():
            result[defect_type].update(pixel_metrics(maps[in_rows], masks[in_rows], valid=valid[in_rows]))
    return result


def unseen_good_rates(calibration: Calibration, scores: np.ndarray, maps: np.ndarray) -> dict[str, Any]:
    """How the saved thresholds do on good images that neither fitting nor calibration saw: the image FPR with
    its exact 95 % interval beside the target, the share of their pixels the mask flags; and, for the targets
    1 %, 5 %, 10 %, the split-conformal threshold from the held-out scores measured the same way."""
    scores = np.asarray(scores, dtype=np.float64)

    def measured(threshold: float | None) -> dict[str, Any]:
        flagged = int(calibration.is_defect(scores, threshold=threshold).sum())
        return {"fpr": flagged / scores.size if scores.size else float("nan"),
                "ci": list(clopper_pearson(flagged, int(scores.size)))}

    saved = measured(None)  # the saved threshold
    rates: dict[str, Any] = {"fpr_target": calibration.image_target_fpr, "n_unseen_good": int(scores.size),
                             "fpr_unseen_good": saved["fpr"], "fpr_unseen_good_ci": saved["ci"]}
    if calibration.heldout_scores:
        by_target = []
        for target in CHECKED_FPR_TARGETS:
            conformal = conformal_threshold(calibration.heldout_scores, target)
            by_target.append({"target": target, "promised": conformal.promised_fpr, **measured(conformal.threshold)})
        rates["fpr_unseen_good_by_target"] = by_target
    if len(maps):
        finite = np.isfinite(maps)
        rates["pixel_fpr_unseen_good"] = float((maps[finite] > calibration.pixel_threshold).mean())
    return rates


def _f1_pixel_threshold(maps: np.ndarray, masks: np.ndarray, max_pixels: int = 2_000_000) -> float:
    """F1-optimal pixel threshold over a seeded subsample of pixels (all of them when few)."""
    scores, labels = maps.ravel(), masks.ravel()
    if scores.size > max_pixels:
        chosen = np.random.default_rng(0).choice(scores.size, max_pixels, replace=False)
        scores, labels = scores[chosen], labels[chosen]
    return f1_optimal_threshold(scores, labels.astype(int))[0]


def record_evaluation(model: AnomalyModel, dataset: Dataset, evaluation: Evaluation) -> None:
    """Keep an evaluation in the model's metadata (what the app lists and plots)."""
    info = model.info
    info.category, info.data_path, info.layout = dataset.category, str(dataset.root), dataset.layout
    info.metrics = dict(evaluation.metrics)
    info.test_scores = list(evaluation.records)
    info.pixel_quantiles = dict(evaluation.pixel_quantiles)
    info.pixel_counts = dict(evaluation.pixel_counts)
    if model.calibration is not None:
        model.calibration.f1_image_threshold = evaluation.f1_image_threshold
        model.calibration.f1_pixel_threshold = evaluation.f1_pixel_threshold
        defect_pixels = evaluation.pixel_quantiles.get("defect") or []
        if defect_pixels:  # the colour scale reaches the defects' high scores (99.9 %: not one outlier pixel)
            model.calibration.pixel_display_max = float(np.quantile(defect_pixels, 0.999))


def round_metrics(metrics: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """Metrics with every float rounded to `digits` (for printing and tables); other values unchanged."""

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, digits)
        if isinstance(value, dict):
            return {key: rounded(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [rounded(item) for item in value]
        return value

    return rounded(dict(metrics))
