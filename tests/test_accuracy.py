"""Accuracy regression on real data with real weights (MVTec AD bottle, EfficientNet-Lite0, default settings).

Skips on a machine without the shared data; fails instead of skipping when CI=true.
"""

from __future__ import annotations

import pytest

from inspection.data import open_dataset
from inspection.evaluate import fit_on_dataset
from inspection.registry import create_model

FLOORS = {
    "patchcore": {"image_auroc": 0.995, "pixel_auroc": 0.975, "aupro": 0.90},
    "padim": {"image_auroc": 0.99, "pixel_auroc": 0.97, "aupro": 0.88},
}


@pytest.mark.parametrize("method", sorted(FLOORS))
def test_bottle_accuracy_floors(method, shared_data):
    dataset = open_dataset(shared_data / "mvtec_ad", "bottle")
    model = create_model(method)
    evaluation = fit_on_dataset(model, dataset)
    metrics = evaluation.metrics
    for name, floor in FLOORS[method].items():
        assert metrics[name] >= floor, f"{method} {name} {metrics[name]:.4f} fell below {floor}"
    # The verdict threshold was calibrated on held-out good images, not on the fitting ones.
    assert model.info["n_heldout_images"] == 21 and model.calibration.heldout_fpr() <= 0.05
