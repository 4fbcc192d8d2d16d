"""Regenerate assets/demo_result.png, the README's picture: PatchCore on the built-in demo data.

Run after installing the package (README): ``python assets/make_figure.py``. Each row is one test image: the
original, the result picture (heatmap, defect boxes and scores, drawn as the CLI and the app draw it), the
predicted mask at the saved pixel threshold, and the ground truth.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from inspection.data.datasets import load_sample_mask, open_dataset
from inspection.data.demo import generate_demo_dataset
from inspection.data.images import load_image
from inspection.registry import create_model
from inspection.results.image import defect_mask_on_original, image_result
from inspection.results.pictures import colorbar, mask_overlay
from inspection.workflows.train import fit_on_dataset


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    band = np.full((28, image.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 30), 1, cv2.LINE_AA)
    return np.vstack([band, image])


def main() -> None:
    dataset = open_dataset(generate_demo_dataset(Path(tempfile.mkdtemp())))
    model = create_model("patchcore")
    fit_on_dataset(model, dataset)  # the evaluation sets the top of the colour scale (the defects' high scores)
    chosen = [next(s for s in dataset.test if s.defect_type == kind) for kind in ("good", "scratch", "hole", "stain")]
    prediction = model.predict([sample.path for sample in chosen])
    rows = []
    for index, sample in enumerate(chosen):
        image = load_image(sample.path)
        result = image_result(prediction, index, image, sample.path.name)
        predicted = defect_mask_on_original(result, model.calibration)
        cells = [_titled(image, f"{sample.defect_type}"),
                 _titled(result.overlay(), f"score {result.score:.2f} -> {result.verdict}"),
                 _titled(mask_overlay(image, predicted), "predicted mask"),
                 _titled(mask_overlay(image, load_sample_mask(sample), (0, 200, 0)), "ground truth")]
        rows.append(np.hstack([np.pad(cell, ((4, 4), (4, 4), (0, 0)), constant_values=255) for cell in cells]))
    figure = np.vstack(rows)
    bar = cv2.resize(colorbar(vmax=model.calibration.colour_max), (16, figure.shape[0] - 40))
    bar = np.pad(bar, ((20, 20), (8, 8), (0, 0)), constant_values=255)
    figure = np.hstack([figure, bar])
    out = Path(__file__).with_name("demo_result.png")
    cv2.imwrite(str(out), figure[:, :, ::-1])
    print(out)


if __name__ == "__main__":
    main()
