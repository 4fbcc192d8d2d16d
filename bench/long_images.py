"""What inspecting frames of KolektorSDD's size and shape costs, while the data set itself is not on this machine.

Writes a generated set of KolektorSDD's size and shape in the MVTec AD layout — grayscale frames of 500 × 1250
px (commutator-like: vertical copper bars with dark gaps, brushing noise, uneven light), 300 good training
images, 40 good and 12 cracked test images with exact masks — and benches PatchCore at its defaults in the
`aspect` and `tiles` modes on it (each in a fresh process, as `bench` does). What carries over to KolektorSDD is
the cost: fit time, the bank's size, the peak memory of fitting and evaluating, ms per whole original image (all
tiles and stitching included). The accuracy on these synthetic cracks says nothing about the real ones.

    python bench/long_images.py [--train 300] [--out bench/long-images]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from inspection.bench.run import run_bench

CATEGORY = "long_frames"
HEIGHT, WIDTH = 1250, 500
METHODS = ("patchcore:resize_mode=aspect", "patchcore:resize_mode=tiles")


def frame(rng: np.random.Generator) -> np.ndarray:
    """A grey 8-bit HEIGHT × WIDTH frame: copper bars with dark gaps between them, brushing noise, uneven light."""
    columns = np.arange(WIDTH, dtype=np.float32)
    pitch = rng.uniform(60, 70)
    gaps = np.abs(((columns + rng.uniform(0, pitch)) % pitch) - pitch / 2) < 3  # the insulation between bars
    profile = np.where(gaps, 60.0, 150.0).astype(np.float32)
    brushing = cv2.GaussianBlur(rng.standard_normal((HEIGHT, WIDTH), dtype=np.float32), (0, 0), 0.7, sigmaY=12.0)
    light = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), HEIGHT, dtype=np.float32)[:, None]
    image = profile[None, :] * light + 18.0 * brushing / brushing.std()
    return np.clip(image, 0, 255).astype(np.uint8)


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The frame with a thin dark crack across part of one bar, and its mask."""
    start = np.array([rng.uniform(60, WIDTH - 60), rng.uniform(100, HEIGHT - 100)])
    points = start + np.cumsum(rng.normal([2.0, 0.0], [1.0, 1.5], (rng.integers(15, 40), 2)), axis=0)
    mask = np.zeros(image.shape, np.uint8)
    cv2.polylines(mask, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 255, int(rng.integers(2, 4)))
    cracked = image.copy()
    cracked[mask > 0] = (cracked[mask > 0] * 0.35).astype(np.uint8)
    return cracked, mask


def write_set(root: Path, n_train: int, n_test_good: int, n_cracked: int, seed: int = 0) -> Path:
    """The generated set in the MVTec AD layout under root/CATEGORY."""
    rng = np.random.default_rng(seed)
    base = root / CATEGORY
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_train):
        cv2.imwrite(str(base / "train/good" / f"{index:03d}.png"), frame(rng))
    for index in range(n_test_good):
        cv2.imwrite(str(base / "test/good" / f"{index:03d}.png"), frame(rng))
    for index in range(n_cracked):
        cracked, mask = crack(frame(rng), rng)
        cv2.imwrite(str(base / "test/crack" / f"{index:03d}.png"), cracked)
        cv2.imwrite(str(base / "ground_truth/crack" / f"{index:03d}_mask.png"), mask)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300, help="good training images (default 300)")
    parser.add_argument("--test-good", type=int, default=40)
    parser.add_argument("--cracked", type=int, default=12)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "long-images"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="long-images-"))
    try:
        root = write_set(scratch, args.train, args.test_good, args.cracked)
        run_bench(METHODS, [str(root)], [CATEGORY], Path(args.out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print((Path(args.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
