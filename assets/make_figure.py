"""Regenerate assets/demo_result.png, the README's picture: PatchCore on the built-in demo data.

Run from the repository root: ``python assets/make_figure.py``. Each row is one test image: the original,
the heatmap overlay with defect boxes and scores, the predicted mask at the saved pixel threshold, and
the ground truth.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspection.data import load_sample_mask, open_dataset  # noqa: E402
from inspection.demo import generate_demo_dataset  # noqa: E402
from inspection.images import load_image  # noqa: E402
from inspection.preprocess import map_to_original  # noqa: E402
from inspection.registry import create_model  # noqa: E402
from inspection.visualize import box_to_original, colorbar, draw_boxes, mask_overlay, overlay  # noqa: E402


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    band = np.full((28, image.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    return np.vstack([band, image])


def main() -> None:
    dataset = open_dataset(generate_demo_dataset(Path(tempfile.mkdtemp())))
    model = create_model("patchcore").fit([sample.path for sample in dataset.train])
    chosen = [next(s for s in dataset.test if s.defect_type == kind) for kind in ("good", "scratch", "hole", "stain")]
    prediction = model.predict([sample.path for sample in chosen])
    rows = []
    for index, sample in enumerate(chosen):
        image = load_image(sample.path)
        geometry = prediction.geometries[index]
        regions = prediction.regions(index) if prediction.verdicts[index] else []
        boxes = [box_to_original(region, geometry) for region in regions]
        heat = draw_boxes(overlay(image, prediction.map_on_original(index)), boxes,
                          [f"{region.max_score:.2f}" for region in regions])
        predicted = map_to_original(prediction.defect_masks()[index].astype(np.float32), geometry) > 0.5
        verdict = "DEFECT" if prediction.verdicts[index] else "good"
        cells = [_titled(image, f"{sample.defect_type}"),
                 _titled(heat, f"score {prediction.image_scores[index]:.2f} -> {verdict}"),
                 _titled(mask_overlay(image, predicted), "predicted mask"),
                 _titled(mask_overlay(image, load_sample_mask(sample), (0, 200, 0)), "ground truth")]
        rows.append(np.hstack([np.pad(cell, ((4, 4), (4, 4), (0, 0)), constant_values=255) for cell in cells]))
    figure = np.vstack(rows)
    bar = cv2.resize(colorbar(), (16, figure.shape[0] - 40))
    bar = np.pad(bar, ((20, 20), (8, 8), (0, 0)), constant_values=255)
    figure = np.hstack([figure, bar])
    out = Path(__file__).with_name("demo_result.png")
    cv2.imwrite(str(out), figure[:, :, ::-1])
    print(out)


if __name__ == "__main__":
    main()
