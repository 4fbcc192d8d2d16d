"""One scored image as a JSON record: what the HTTP service answers (`POST /v1/inspect`) and what the live pipelines
send on (MQTT, webhooks) — one schema, `RECORD_SCHEMA`, so that every consumer reads the same fields.

The record agrees with `predict`'s CSV row for the same file: the same score, raw score and verdict, as many regions,
and the largest region's area (areas and boxes are in the file's own pixels, also when it was decoded shrunk).
Torch-free: the torch-free runtime's scorers are recorded the same way.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, TypedDict

import cv2
import numpy as np

from ..model.scorer import Scorer
from .image import ImageResult

#: The schema's name and version, written into every record: a consumer can tell which fields to expect.
RECORD_SCHEMA_ID = "inspection-record/1"
#: The timings every record states, in milliseconds.
TIMING_NAMES = ("decode", "score", "total")


class ThresholdRecord(TypedDict):
    score: float  # the image threshold on the model's scale (0.5)
    raw: float  # the same threshold in the method's raw score units


class RegionRecord(TypedDict):
    box: list[int]  # [x0, y0, x1, y1] in the file's own pixels, x1 and y1 exclusive
    area: int  # defect pixels in the file's own pixels
    max_score: float  # the region's peak on the model's scale (its pixel threshold is 0.5)


class FamiliarityRecord(TypedDict):
    unlike: bool  # beyond the line: the verdict is "unlike"
    distance: float  # cosine distance to the nearest training image
    threshold: float  # the line beyond which a picture is unlike the training data


class ModelRecord(TypedDict):
    id: str  # the model file's or exported folder's name
    method: str
    created: str  # ISO 8601, UTC
    fingerprint: str  # equal for a model file and its export
    runtime: str  # torch, onnx or openvino


class LiveRecord(TypedDict):
    source: str  # what the pipeline reads (a path, usb:N, a URL)
    index: int  # the frame's number from that source, from 0
    captured_at: str  # when the source got it (ISO 8601, UTC)


class InspectionRecord(TypedDict, total=False):
    schema: str
    file: str | None
    width: int
    height: int
    score: float
    raw_score: float
    verdict: str
    threshold: ThresholdRecord
    regions: list[RegionRecord]
    fully_inspected: bool
    familiarity: FamiliarityRecord | None
    model: ModelRecord
    timing_ms: dict[str, float]
    heatmap_png: str  # only when asked for
    live: LiveRecord  # only from a live pipeline


def _number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def _integer(description: str, minimum: int = 0) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "description": description}


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _object(properties: Mapping[str, Any], description: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": dict(properties),
            "required": [name for name in properties if name not in optional], "additionalProperties": False}


#: Every field of a record and what it means (JSON Schema, draft 2020-12): the service's OpenAPI page shows it, and
#: a consumer may validate against it.
RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": RECORD_SCHEMA_ID,
    "title": "InspectionRecord",
    **_object({
        "schema": {"const": RECORD_SCHEMA_ID, "description": "This schema's name and version."},
        "file": {"type": ["string", "null"], "description": "The image's file name as sent (null: a raw body)."},
        "width": _integer("The image's width in its own pixels (after EXIF orientation).", 1),
        "height": _integer("The image's height in its own pixels (after EXIF orientation).", 1),
        "score": _number("The image's anomaly score on the model's scale: 0.5 is the saved threshold, 0 the "
                         "calmest held-out good image; higher is more anomalous."),
        "raw_score": _number("The same score in the method's own units (what the raw threshold is in)."),
        "verdict": {"enum": ["good", "defect", "unlike"],
                    "description": "defect: the score is above the threshold; good: at or below it; unlike: the "
                                   "picture is unlike the training images (another part, a blank, a test pattern), "
                                   "so neither can be said."},
        "threshold": _object({"score": _number("The image threshold on the model's scale (0.5)."),
                              "raw": _number("The image threshold in the method's raw units.")},
                             "The threshold the verdict is taken at."),
        "regions": {"type": "array", "description": "The defect regions, highest peak first (empty unless the "
                                                    "verdict is defect).",
                    "items": _object({
                        "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
                                "description": "[x0, y0, x1, y1] in the image's own pixels (x1, y1 exclusive)."},
                        "area": _integer("The region's defect pixels, in the image's own pixels."),
                        "max_score": _number("The region's peak on the model's scale (the pixel threshold is 0.5).")},
                        "One defect region.")},
        "fully_inspected": {"type": "boolean",
                            "description": "Whether the model saw every pixel (a centre crop leaves a border out)."},
        "familiarity": {"anyOf": [{"type": "null"}, _object({
            "unlike": {"type": "boolean", "description": "Whether the picture is beyond the line (verdict unlike)."},
            "distance": _number("Cosine distance to the nearest training image."),
            "threshold": _number("The line beyond which a picture is unlike the training images.")},
            "Is this a picture of the part the model knows?")],
            "description": "The familiarity check; null for models made before it."},
        "model": _object({"id": _text("The model file's or exported folder's name."),
                          "method": _text("The anomaly detection method, e.g. patchcore."),
                          "created": _text("When the model was made (ISO 8601, UTC)."),
                          "fingerprint": _text("The model's identity: method, creation, settings, thresholds "
                                               "(equal for a model file and its export)."),
                          "runtime": _text("What scored it: torch, onnx or openvino.")},
                         "The model that scored the image."),
        "timing_ms": {"type": "object", "description": "Milliseconds: decode (bytes to pixels), score (the model "
                                                       "and the regions), total (from the request's arrival to "
                                                       "the answer, waiting included).",
                      "properties": {name: {"type": "number", "minimum": 0} for name in TIMING_NAMES},
                      "required": list(TIMING_NAMES)},
        "heatmap_png": _text("Only when asked for: the heatmap over the image with the regions outlined, a PNG "
                             "in base64."),
        "live": _object({"source": _text("What the pipeline reads: a video file, usb:N, a stream's URL, a folder."),
                         "index": _integer("The frame's number from that source, from 0 (frames dropped because "
                                           "the model was busy leave gaps)."),
                         "captured_at": _text("When the source got the frame (ISO 8601, UTC); timing_ms.total "
                                              "counts from then.")},
                        "Only from a live pipeline (`inspection run`): where the frame came from."),
    }, "One image scored by an anomaly detection model.", optional=("heatmap_png", "live")),
}


def overlay_png(result: ImageResult) -> bytes:
    """The heatmap over the image with each region outlined (what `predict` writes as its overlay), as PNG bytes."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(result.overlay()[:, :, ::-1]))  # OpenCV wants BGR
    if not ok:
        raise ValueError("the overlay could not be encoded as PNG")
    return encoded.tobytes()


def model_record(scorer: Scorer, model_id: str) -> ModelRecord:
    """Which model scored: its name, method, creation, fingerprint and runtime."""
    return {"id": model_id, "method": scorer.name, "created": str(scorer.info.created or ""),
            "fingerprint": scorer.fingerprint, "runtime": scorer.runtime}


def inspection_record(result: ImageResult, scorer: Scorer, timings: Mapping[str, float], model_id: str,
                      file: str | None = None, heatmap: bool = False) -> InspectionRecord:
    """The record of one scored image (`RECORD_SCHEMA`): `timings` in ms (decode, score, total), `file` the name it
    was sent under, `heatmap` to add the overlay PNG (base64)."""
    calibration = scorer.calibration
    if calibration is None:
        raise ValueError("the model has no calibration (thresholds): retrain it")
    missing = [name for name in TIMING_NAMES if name not in timings]
    if missing:
        raise ValueError(f"timings lack {missing}")
    height, width = result.original_size or result.image.shape[:2]
    # Areas from the same table `predict` fills its CSV from: the record's largest area is the CSV's.
    rows = result.region_rows(brief=True)
    regions: list[RegionRecord] = [
        {"box": list(result.box_in_file(box)), "area": int(row["area (px)"]), "max_score": float(region.max_score)}
        for region, box, row in zip(result.regions, result.boxes, rows)]
    familiarity: FamiliarityRecord | None = None
    if result.familiarity_distance is not None and result.familiarity_threshold is not None:
        familiarity = {"unlike": bool(result.unlike_training), "distance": float(result.familiarity_distance),
                       "threshold": float(result.familiarity_threshold)}
    record: InspectionRecord = {
        "schema": RECORD_SCHEMA_ID, "file": file, "width": int(width), "height": int(height),
        "score": float(result.score), "raw_score": float(result.raw_score), "verdict": result.verdict_word,
        "threshold": {"score": calibration.normalized_image_threshold, "raw": float(calibration.image_threshold)},
        "regions": regions, "fully_inspected": result.fully_inspected, "familiarity": familiarity,
        "model": model_record(scorer, model_id),
        "timing_ms": {name: round(float(value), 3) for name, value in timings.items()},
    }
    if heatmap:
        record["heatmap_png"] = base64.b64encode(overlay_png(result)).decode("ascii")
    return record
