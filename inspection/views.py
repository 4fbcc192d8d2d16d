"""What the app's pages show, computed without Streamlit: results of one image, threshold operating points,
the training form from the parameter declarations, dataset paging and thumbnails, uploads and data sources.

Pages only lay these out; every number a page displays comes from a function here, so it is tested
without a browser.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from .base import AnomalyModel, Calibration, Prediction
from .data import GOOD, Dataset, DatasetError, Sample, list_categories, open_dataset
from .images import IMAGE_EXTENSIONS, ImageLoadError, load_image, read_image_info
from .params import Param
from .preprocess import Geometry
from .regions import Region
from .threshold import (rate_above, rates_at_threshold, roc_curve_points, threshold_at_fpr, threshold_at_rate,
                        validate_fpr)
from .visualize import box_to_original, draw_boxes, mask_overlay, overlay

# ----------------------------------------------------------------------------------------------- uploads

UPLOAD_TYPES: tuple[str, ...] = tuple(sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS))
MAX_UPLOAD_MB_ENV = "INSPECTION_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 50  # the same limit as server.maxUploadSize in .streamlit/config.toml


def max_upload_mb() -> int:
    """The upload size limit in MB: env INSPECTION_MAX_UPLOAD_MB, else 50."""
    raw = os.environ.get(MAX_UPLOAD_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_UPLOAD_MB
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_UPLOAD_MB_ENV}={raw!r} is not a whole number of megabytes") from None
    if value <= 0:
        raise ValueError(f"{MAX_UPLOAD_MB_ENV}={raw!r} must be a positive number of megabytes")
    return value


def check_upload(name: str, size_bytes: int, limit_mb: int | None = None) -> None:
    """Refuse a file of the wrong type or above the size limit, with a message naming the file."""
    extension = Path(name).suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        raise ImageLoadError(f"{name}: file type {extension or '(none)'!r} is not an image type this tool reads "
                             f"({', '.join(UPLOAD_TYPES)})")
    limit_mb = max_upload_mb() if limit_mb is None else limit_mb
    if size_bytes > limit_mb * 1024 * 1024:
        raise ImageLoadError(f"{name}: {size_bytes / 1024 / 1024:.1f} MB is above the upload limit of {limit_mb} MB")


def decode_upload(name: str, data: bytes, limit_mb: int | None = None) -> np.ndarray:
    """Check an uploaded file and decode it to H×W×3 uint8 RGB (ImageLoadError naming the file otherwise)."""
    check_upload(name, len(data), limit_mb)
    return load_image(data, name=name)


def content_digest(data: bytes | np.ndarray) -> str:
    """A short hash of file bytes or pixels: the cache key of a forward pass."""
    payload = data.tobytes() + str(data.shape).encode() if isinstance(data, np.ndarray) else bytes(data)
    return hashlib.sha1(payload).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- results


def verdict_label(is_defect: bool) -> str:
    """The word a page shows for a verdict."""
    return "DEFECT" if is_defect else "GOOD"


@dataclass
class ImageResult:
    """One image through a model: score and verdict, heatmap and defect regions on the original image."""

    name: str
    image: np.ndarray  # original RGB
    score: float  # normalised: the model's image threshold is 0.5
    raw_score: float
    is_defect: bool
    heatmap: np.ndarray  # normalised map on the original grid; NaN = not inspected
    regions: list[Region]  # at the working resolution, normalised scores
    boxes: list[tuple[int, int, int, int]]  # the regions' boxes in original pixels
    geometry: Geometry
    reconstruction: np.ndarray | None = None  # working resolution RGB, for methods that reconstruct

    @property
    def verdict(self) -> str:
        return verdict_label(self.is_defect)

    def overlay(self, with_boxes: bool = True) -> np.ndarray:
        """Heatmap over the image, each defect region outlined and labelled with its peak score."""
        blended = overlay(self.image, self.heatmap)
        if not with_boxes or not self.boxes:
            return blended
        return draw_boxes(blended, self.boxes, [f"{region.max_score:.2f}" for region in self.regions])

    def region_rows(self) -> list[dict[str, Any]]:
        """A table of the regions: box in original pixels, area, peak and mean score."""
        scale = self.geometry.scale_x * self.geometry.scale_y
        return [{"region": index + 1, "box (x0, y0)–(x1, y1)": f"({box[0]}, {box[1]})–({box[2]}, {box[3]})",
                 "area (px)": int(round(region.area / scale)), "max score": round(region.max_score, 3),
                 "mean score": round(region.mean_score, 3)}
                for index, (region, box) in enumerate(zip(self.regions, self.boxes))]


def image_result(prediction: Prediction, index: int, image: np.ndarray, name: str,
                 pixel_threshold: float | None = None, min_area: int = 16,
                 regions_when_good: bool = False) -> ImageResult:
    """Everything the pages show about image `index` of a prediction (raw thresholds; the saved ones by default).

    Defect regions are listed only for images judged defects, unless `regions_when_good`: a part that passes
    has no defects to outline, only spots below the verdict (the Inspect page shows those on request).
    """
    calibration = _require_calibration(prediction.calibration)
    raw_score = float(prediction.raw_scores[index])
    is_defect = raw_score > calibration.image_threshold
    regions = (prediction.regions(index, pixel_threshold=pixel_threshold, min_area=min_area)
               if is_defect or regions_when_good else [])
    geometry = prediction.geometries[index]
    reconstruction = prediction.reconstructions[index] if prediction.reconstructions is not None else None
    return ImageResult(
        name=name, image=image, score=float(prediction.image_scores[index]), raw_score=raw_score,
        is_defect=bool(is_defect), heatmap=prediction.map_on_original(index),
        regions=regions, boxes=[box_to_original(region, geometry) for region in regions], geometry=geometry,
        reconstruction=reconstruction)


def defect_mask_on_original(result: ImageResult, calibration: Calibration,
                            pixel_threshold: float | None = None) -> np.ndarray:
    """Binary defect mask on the original grid at a raw pixel threshold (the saved one by default)."""
    raw = calibration.pixel_threshold if pixel_threshold is None else float(pixel_threshold)
    normalised = float(calibration.pixel_scale.normalize(raw))
    heat = result.heatmap
    return np.greater(heat, normalised, where=~np.isnan(heat), out=np.zeros(heat.shape, bool))


def mask_picture(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """A mask shown over a dimmed copy of its image, so that its position on the part stays visible."""
    dimmed = (image.astype(np.float32) * 0.55).astype(np.uint8)
    return mask_overlay(dimmed, mask, color=color, alpha=0.65)


def _require_calibration(calibration: Calibration | None) -> Calibration:
    if calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    return calibration


# --------------------------------------------------------------------------------------------- thresholds


@dataclass
class ScoreTable:
    """Test-split image scores recorded in a model file (raw units), with labels and defect types."""

    scores: np.ndarray
    labels: np.ndarray
    files: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)

    @property
    def has_both_classes(self) -> bool:
        return bool(self.labels.size) and 0 < int(self.labels.sum()) < self.labels.size

    @property
    def good(self) -> np.ndarray:
        return self.scores[self.labels == 0]

    @property
    def defect(self) -> np.ndarray:
        return self.scores[self.labels == 1]


def recorded_test_scores(info: dict[str, Any]) -> ScoreTable:
    """The per-image test scores a model file carries (empty when it was not evaluated)."""
    records = info.get("test_scores") or []
    return ScoreTable(np.array([float(record["score"]) for record in records], dtype=np.float64),
                      np.array([int(record["label"]) for record in records], dtype=np.int64),
                      [str(record.get("file", "")) for record in records],
                      [str(record.get("type", "")) for record in records])


@dataclass(frozen=True)
class OperatingPoint:
    """Rates at one threshold: on the test split, plus the FPR measured on the held-out good images."""

    threshold: float  # raw
    fpr: float
    tpr: float
    precision: float
    confusion: dict[str, float]  # tp, fp, tn, fn (counts for images; shares of pixels for pixels)
    heldout_fpr: float


def image_operating_point(table: ScoreTable, calibration: Calibration, threshold: float) -> OperatingPoint:
    """Image-level FPR, TPR, precision and confusion counts on the test split at a raw threshold."""
    if table.scores.size:
        rates = rates_at_threshold(table.scores, table.labels, threshold)
        confusion = {key: rates[key] for key in ("tp", "fp", "tn", "fn")}
        fpr, tpr, precision = rates["fpr"], rates["tpr"], rates["precision"]
    else:
        confusion, fpr, tpr, precision = {}, math.nan, math.nan, math.nan
    return OperatingPoint(float(threshold), fpr, tpr, precision, confusion, calibration.heldout_fpr(threshold))


def image_roc(table: ScoreTable) -> dict[str, np.ndarray]:
    """ROC points of the test split (FPR, TPR, raw thresholds)."""
    return roc_curve_points(table.scores, table.labels)


def image_threshold_for_fpr(calibration: Calibration, target_fpr: float) -> float:
    """The raw image threshold whose FPR on the held-out good images is at most the target."""
    validate_fpr(target_fpr)
    if not calibration.heldout_scores:
        raise ValueError("the model file has no held-out good scores to set a threshold from")
    return threshold_at_fpr(calibration.heldout_scores, target_fpr)


@dataclass
class PixelSummary:
    """Pixel-score quantiles of the test split's good and defect pixels (raw units)."""

    good: np.ndarray
    defect: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)  # "good"/"defect" pixel counts when recorded

    @property
    def available(self) -> bool:
        return bool(self.good.size) and bool(self.defect.size)


def pixel_summary(info: dict[str, Any]) -> PixelSummary:
    """The pixel-score quantiles (and counts, when recorded) a model file carries."""
    quantiles = info.get("pixel_quantiles") or {}
    counts = info.get("pixel_counts") or {}
    return PixelSummary(np.asarray(quantiles.get("good") or [], np.float64),
                        np.asarray(quantiles.get("defect") or [], np.float64),
                        {key: int(value) for key, value in counts.items()})


def pixel_roc(summary: PixelSummary) -> dict[str, np.ndarray]:
    """Pixel ROC from the saved quantiles: FPR and TPR at every quantile value, thresholds descending."""
    thresholds = np.unique(np.concatenate([summary.good, summary.defect]))[::-1]
    below = np.nextafter(thresholds[-1], -np.inf)
    thresholds = np.concatenate([[np.nextafter(thresholds[0], np.inf)], thresholds, [below]])
    return {"fpr": rate_above(summary.good, thresholds), "tpr": rate_above(summary.defect, thresholds),
            "threshold": thresholds}


def pixel_operating_point(summary: PixelSummary, calibration: Calibration, threshold: float) -> OperatingPoint:
    """Pixel-level rates at a raw threshold; precision needs the pixel counts (NaN without them)."""
    fpr = rate_above(summary.good, threshold) if summary.good.size else math.nan
    tpr = rate_above(summary.defect, threshold) if summary.defect.size else math.nan
    n_good, n_defect = summary.counts.get("good"), summary.counts.get("defect")
    if n_good and n_defect:
        tp, fp = tpr * n_defect, fpr * n_good
        precision = tp / (tp + fp) if tp + fp > 0 else math.nan
        confusion = {"tp": tp, "fp": fp, "tn": n_good - fp, "fn": n_defect - tp}
    else:
        precision = math.nan
        # Without counts, each row of the matrix is the share of that class's pixels.
        confusion = {"tp": tpr, "fn": 1 - tpr, "fp": fpr, "tn": 1 - fpr}
    return OperatingPoint(float(threshold), fpr, tpr, precision, confusion, calibration.heldout_pixel_fpr(threshold))


def pixel_threshold_for_fpr(calibration: Calibration, target_fpr: float) -> float:
    """The raw pixel threshold at a target FPR on the held-out good pixels (from their saved quantiles)."""
    validate_fpr(target_fpr)
    if not calibration.heldout_pixel_quantiles:
        raise ValueError("the model file has no held-out pixel scores to set a threshold from")
    return threshold_at_rate(calibration.heldout_pixel_quantiles, target_fpr)


def confusion_rows(point: OperatingPoint, counts: bool = True) -> list[dict[str, Any]]:
    """A 2×2 confusion matrix as table rows (actual × predicted)."""
    matrix = point.confusion
    if not matrix:
        return []

    def shown(value: float) -> Any:
        return int(round(value)) if counts else f"{value:.2%}"

    return [{"actual": "defect", "predicted defect": shown(matrix["tp"]), "predicted good": shown(matrix["fn"])},
            {"actual": "good", "predicted defect": shown(matrix["fp"]), "predicted good": shown(matrix["tn"])}]


def slider_bounds(values: Iterable[float], threshold: float) -> tuple[float, float]:
    """A slider range (normalised units) covering the scores and the threshold, with a margin."""
    finite = np.asarray([value for value in values if math.isfinite(value)] + [threshold, 0.0, 1.0], np.float64)
    low, high = float(finite.min()), float(finite.max())
    margin = 0.05 * (high - low or 1.0)
    return round(low - margin, 3), round(high + margin, 3)


def format_rate(value: float) -> str:
    """A rate as a percentage; '—' when it is undefined (NaN)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.1%}"


# ----------------------------------------------------------------------------------------------- training


GROUP_TITLES = {"backbone": "Backbone", "method": "Method parameters", "preprocessing": "Preprocessing",
                "calibration": "Calibration and running"}
GROUP_ORDER = ("backbone", "method", "preprocessing", "calibration")
# Free-text parameters whose values form a known set (the declaration checks them at run time).
_KNOWN_CHOICES = {"device": ("auto", "cpu", "cuda")}


@dataclass(frozen=True)
class FieldSpec:
    """How one declared parameter is shown as a form widget."""

    name: str
    widget: str  # "checkbox" | "select" | "int" | "float" | "text"
    help: str
    default: Any
    options: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def _float_step(param: Param) -> float:
    """A step of about a tenth of the default's magnitude (0.01 of the range when the default is 0)."""
    reference = abs(float(param.default)) or (float(param.maximum) - float(param.minimum)
                                              if param.minimum is not None and param.maximum is not None else 1.0)
    return float(10 ** math.floor(math.log10(reference) - 1)) if reference > 0 else 0.01


def field_spec(param: Param) -> FieldSpec:
    """The widget for a parameter: a checkbox, a select box (choices), a number input, or a text box."""
    choices = param.choices or _KNOWN_CHOICES.get(param.name)
    if param.kind is bool:
        return FieldSpec(param.name, "checkbox", param.help, bool(param.default))
    if choices:
        return FieldSpec(param.name, "select", param.help, param.default, tuple(choices))
    if param.kind is int:
        return FieldSpec(param.name, "int", param.help, int(param.default), (),
                         None if param.minimum is None else int(math.ceil(param.minimum)),
                         None if param.maximum is None else int(math.floor(param.maximum)), 1)
    if param.kind is float:
        return FieldSpec(param.name, "float", param.help, float(param.default), (), param.minimum, param.maximum,
                         _float_step(param))
    return FieldSpec(param.name, "text", param.help, "" if param.default is None else str(param.default))


def form_fields(method_cls: type[AnomalyModel]) -> dict[str, list[FieldSpec]]:
    """A method's parameters as form fields, grouped (backbone, method, preprocessing, calibration)."""
    groups: dict[str, list[FieldSpec]] = {}
    for param in method_cls.param_set():
        groups.setdefault(param.group, []).append(field_spec(param))
    ordered = {group: groups.pop(group) for group in GROUP_ORDER if group in groups}
    ordered.update(groups)  # any group a later method invents comes last
    return ordered


def resolve_form(method_cls: type[AnomalyModel], values: dict[str, Any]) -> dict[str, Any]:
    """Form values validated by the method's declarations and its own checks (ValueError naming the problem).

    Building the (unfitted, weightless) model runs the method's checks, e.g. an odd neighbourhood or a GPU
    asked for on a machine without one, so the form refuses them before a training starts.
    """
    known = set(method_cls.param_set().names())
    params = method_cls.param_set().resolve({name: value for name, value in values.items() if name in known})
    method_cls(**params)
    return params


# ----------------------------------------------------------------------------------------------- datasets

SPLITS = ("all", "train", "test")


def filter_samples(dataset: Dataset, split: str = "all", defect_type: str = "all") -> list[Sample]:
    """The dataset's samples of one split ("all", "train", "test") and one type ("all", "good", a defect)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    samples = {"all": dataset.train + dataset.test, "train": dataset.train, "test": dataset.test}[split]
    if defect_type != "all":
        samples = [sample for sample in samples if sample.defect_type == defect_type]
    return samples


def page_count(n_items: int, per_page: int) -> int:
    """Pages needed for `n_items` (at least 1)."""
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    return max(1, math.ceil(n_items / per_page))


def page_items(items: Sequence[Any], page: int, per_page: int) -> list[Any]:
    """Items of 1-based page `page` (clamped to the last page)."""
    page = min(max(1, int(page)), page_count(len(items), per_page))
    return list(items[(page - 1) * per_page: page * per_page])


def thumbnail(path: str | os.PathLike, size: int = 160) -> np.ndarray:
    """A small RGB preview whose longer side is `size` (area interpolation)."""
    image = load_image(path)
    scale = size / max(image.shape[:2])
    if scale >= 1:
        return image
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def sample_details(sample: Sample, root: Path | None = None) -> dict[str, Any]:
    """File, split, type, size and mode of a sample, read from its header (pixels are not decoded)."""
    header = read_image_info(sample.path)
    return {"file": str(sample.path.relative_to(root)) if root else sample.path.name, "split": sample.split,
            "type": sample.defect_type, "size": f"{header['width']} × {header['height']}",
            "mode": header["mode"], "format": header["format"] or "?",
            "file size": f"{sample.path.stat().st_size / 1024:.1f} KB",
            "ground-truth mask": "yes" if sample.mask_path else ("—" if sample.label == 0 else "none")}


def count_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """Images per split and type, as table rows."""
    return [{"split": split, "type": defect_type, "images": count}
            for split, by_type in dataset.counts().items() for defect_type, count in by_type.items()]


def sample_label(sample: Sample) -> str:
    """A short name for pickers: 'test/hole/003.png'."""
    return f"{sample.split}/{sample.defect_type}/{sample.path.name}"


def default_compare_samples(dataset: Dataset, per_type: int = 1) -> list[Sample]:
    """A few test images: the first of each type (good first), for a quick comparison."""
    chosen: list[Sample] = []
    types = [GOOD] + dataset.defect_types()
    for defect_type in types:
        chosen.extend([sample for sample in dataset.test if sample.defect_type == defect_type][:per_type])
    return chosen


# ------------------------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class DataSource:
    """Where the images come from: the demo, a local folder (and category), or a downloaded MVTec category."""

    kind: str  # "demo" | "folder" | "download"
    root: str
    category: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "demo":
            return "Built-in demo dataset (surface)"
        return f"{self.root}" + (f" · {self.category}" if self.category else "")


def folder_categories(path: str | os.PathLike) -> list[str] | None:
    """Categories of a root of MVTec categories; None when `path` is itself a dataset; DatasetError otherwise."""
    folder = Path(path).expanduser()
    if not str(path).strip():
        raise DatasetError("no folder given: type the path of a dataset folder")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    if (folder / "train" / GOOD).is_dir() or (folder / GOOD).is_dir():
        return None
    categories = list_categories(folder)
    if not categories:
        raise DatasetError(f"{folder}: neither a dataset (train/good/ or good/) nor a folder of MVTec categories")
    return categories


def open_source(source: DataSource) -> Dataset:
    """The Dataset of a data source (DatasetError with a clear message when it is not usable)."""
    return open_dataset(source.root, source.category)


def known_datasets(data_dir: str | os.PathLike) -> list[tuple[str, str | None]]:
    """(root, category) of datasets already in the data folder: categories of its subfolders, or the subfolders."""
    data_dir = Path(data_dir).expanduser()
    found: list[tuple[str, str | None]] = []
    if not data_dir.is_dir():
        return found
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if (entry / "train" / GOOD).is_dir() or (entry / GOOD).is_dir():
            found.append((str(entry), None))
        else:
            try:
                found.extend((str(entry), category) for category in list_categories(entry))
            except DatasetError:
                continue
    return found


# ------------------------------------------------------------------------------------------------ compare


def metric_rows(entries: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per model: metrics and speed as recorded at training (ModelEntry or header dicts)."""
    rows = []
    for entry in entries:
        row = entry.row()
        row.pop("file", None)
        row["device"] = entry.metrics.get("device", "—")
        row["test images"] = entry.metrics.get("n_test")
        rows.append(row)
    return rows


def evaluation_row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A row of metrics measured now (same keys as metric_rows' metric columns)."""

    def rounded(key: str, digits: int = 3) -> float | None:
        value = metrics.get(key)
        return None if value is None else round(float(value), digits)

    return {"name": name, "image AUROC": rounded("image_auroc"), "pixel AUROC": rounded("pixel_auroc"),
            "AUPRO": rounded("aupro"), "ms / image": rounded("predict_ms_per_image", 1),
            "device": metrics.get("device", "—"), "test images": metrics.get("n_test")}
