"""A built-in demo dataset: synthetic brushed-metal surfaces with scratches, holes and stains.

The images are generated deterministically (same seed → byte-identical PNG files) in the MVTec AD
layout, with exact masks taken from the geometry used to draw each defect. Within each defect
type the defect contrast falls from obvious (index 000) to barely visible (the last index), so
that a good detector's metrics stay informative instead of saturating at 1.0.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEMO_CATEGORY = "surface"
GENERATOR_VERSION = 1
DATA_DIR_ENV = "INSPECTION_DATA_DIR"
MARKER_NAME = ".inspection_demo.json"
IMAGE_SIZE = 256

TRAIN_GOOD_COUNT = 60
TEST_GOOD_COUNT = 20
DEFECT_COUNT = 10  # per defect type

# Standard deviation of the texture's own fluctuations, the yardstick for defect contrast.
TEXTURE_NOISE = 0.05
# Defect amplitude, in units of TEXTURE_NOISE, from the first (obvious) to the last (faint) image.
STRONGEST_CONTRAST = 6.0
FAINTEST_CONTRAST = 0.5

_PAD = 32  # extra border so blurred noise has no edge artefacts
_BASE_COLOUR = np.array([0.57, 0.59, 0.62], dtype=np.float32)  # slightly bluish steel
_STAIN_COLOURS = np.array(
    [
        [0.55, -0.05, -0.85],  # rust
        [-0.55, -0.15, 0.75],  # bluish oil film
        [0.35, 0.45, -0.75],  # yellowish residue
        [-0.45, -0.65, -0.75],  # dark grime
    ],
    dtype=np.float32,
)


# --------------------------------------------------------------------------- texture


def _normalised(field: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std version of a noise field."""
    centred = field - field.mean()
    return centred / (centred.std() + 1e-12)


def _surface(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A brushed-metal texture, H×W×3 float32 around the base colour, with per-image jitter."""
    canvas = size + 2 * _PAD
    # Brushing: white noise smeared along x gives long thin streaks.
    streaks = cv2.GaussianBlur(rng.standard_normal((canvas, canvas), dtype=np.float32), (0, 0), 10.0, sigmaY=0.7)
    # Fine grain: band-pass (difference of Gaussians) isotropic noise.
    white = rng.standard_normal((canvas, canvas), dtype=np.float32)
    grain = cv2.GaussianBlur(white, (0, 0), 0.8) - cv2.GaussianBlur(white, (0, 0), 3.0)
    noise = (0.85 * _normalised(streaks) + 0.45 * _normalised(grain))[_PAD:-_PAD, _PAD:-_PAD]

    # Oriented sinusoids (machining marks); a random phase is a random shift of the pattern.
    # sin(a·x + b·y + c) = sin(a·x)·cos(b·y + c) + cos(a·x)·sin(b·y + c): outer products of 1-D
    # vectors instead of trigonometry on every pixel.
    coordinate = np.arange(size, dtype=np.float32)
    tilt = float(np.deg2rad(rng.uniform(-2.0, 2.0)))
    marks = np.zeros((size, size), dtype=np.float32)
    for period, amplitude, angle_offset in ((5.3, 0.35, 0.0), (11.7, 0.45, 0.03), (23.0, 0.30, -0.05)):
        angle = np.pi / 2 + tilt + angle_offset  # wave vector near vertical → near-horizontal stripes
        along_x = 2 * np.pi * np.cos(angle) / period * coordinate
        along_y = 2 * np.pi * np.sin(angle) / period * coordinate + float(rng.uniform(0, 2 * np.pi))
        marks += amplitude * (np.outer(np.cos(along_y), np.sin(along_x)) + np.outer(np.sin(along_y), np.cos(along_x)))

    # Soft illumination gradient in a random direction.
    direction = float(rng.uniform(0, 2 * np.pi))
    centred = (coordinate - size / 2) / size
    shading = (centred[None, :] * np.cos(direction) + centred[:, None] * np.sin(direction)).astype(np.float32)

    contrast = float(rng.uniform(0.85, 1.15))
    brightness = float(rng.uniform(-0.04, 0.04))
    gray = contrast * TEXTURE_NOISE * _normalised(noise + marks) + 0.05 * shading + brightness
    channel_gain = np.array([1.0, 1.0, 1.05], dtype=np.float32)
    # Faint colour variation (a tint per image, a slow blotchy hue drift) so that a colour defect
    # is not trivially separable from a perfectly gray texture.
    tint = rng.normal(0.0, 0.008, 3).astype(np.float32)
    coarse = rng.standard_normal((6, 6, 3), dtype=np.float32)
    drift = 0.007 * _normalised(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))
    return _BASE_COLOUR + tint + gray[..., None] * channel_gain + drift


# --------------------------------------------------------------------------- defects
# Each returns (delta to add to the H×W×3 image, boolean mask), both from one geometry.


def _polar_distance(
    rng: np.random.Generator, center: np.ndarray, radius: float, harmonics: int, wobble: float, size: int
) -> np.ndarray:
    """Distance to `center` divided by an irregular radius r(θ): < 1 inside the blob."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = ys - center[1], xs - center[0]
    theta = np.arctan2(dy, dx)
    ellipse = rng.uniform(0.75, 1.0)  # roundish, not perfect circles
    tilt = rng.uniform(0, np.pi)
    boundary = np.ones_like(theta)
    for order in range(2, 2 + harmonics):
        boundary += (wobble / order) * rng.uniform(0.5, 1.0) * np.sin(order * theta + rng.uniform(0, 2 * np.pi))
    u = dx * np.cos(tilt) + dy * np.sin(tilt)
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / ellipse
    return np.sqrt(u * u + v * v) / (radius * boundary)


def _scratch(rng: np.random.Generator, amplitude: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly curved bright or dark line of random angle and length."""
    length = rng.uniform(50, 150)
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    margin = 12 + length / 2 * np.abs(direction)
    center = rng.uniform(margin, size - margin)
    bend = rng.uniform(-0.15, 0.15) * length * np.array([-direction[1], direction[0]])
    steps = np.linspace(-0.5, 0.5, 48)[:, None]
    # A quadratic bend (parabola through both ends) keeps the scratch a smooth stroke.
    points = center + steps * length * direction + (1 - 4 * steps**2) * bend
    shift = 4  # cv2 sub-pixel coordinates: 4 fractional bits
    polyline = np.round(points * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    thickness = int(rng.integers(1, 3))
    coverage = np.zeros((size, size), dtype=np.float32)
    cv2.polylines(coverage, [polyline], False, 1.0, thickness, cv2.LINE_AA, shift)
    coverage = np.clip(coverage, 0.0, 1.0)
    mask = coverage >= 0.25
    polarity = 1.0 if rng.random() < 0.5 else -1.0
    delta = (polarity * amplitude * coverage)[..., None] * np.ones(3, dtype=np.float32)
    return delta, mask


def _hole(rng: np.random.Generator, amplitude: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark roundish pit with a brighter, unevenly lit raised rim."""
    radius = rng.uniform(5, 12)
    margin = 1.6 * radius + 6
    center = rng.uniform(margin, size - margin, 2)
    distance = _polar_distance(rng, center, radius, harmonics=2, wobble=0.25, size=size)
    pit = np.clip((1.0 - distance) / 0.25, 0.0, 1.0)  # soft inner edge, flat dark floor
    pit = pit * pit * (3 - 2 * pit)
    rim = np.exp(-(((distance - 1.12) / 0.12) ** 2)) * (distance > 0.9)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)  # the rim catches light on one side
    facing = ((xs - center[0]) * np.cos(light) + (ys - center[1]) * np.sin(light)) / (radius * 1.2)
    rim_shade = 0.55 + 0.35 * np.clip(facing, -1.0, 1.0)
    gray = amplitude * (-pit + rim_shade * rim)
    mask = distance < 1.3
    delta = gray[..., None] * np.ones(3, dtype=np.float32)
    return delta, mask


def _stain(rng: np.random.Generator, amplitude: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged colour blotch (rust, oil, residue or grime)."""
    radius = rng.uniform(14, 34)
    margin = 1.3 * radius + 6
    center = rng.uniform(margin, size - margin, 2)
    distance = _polar_distance(rng, center, radius, harmonics=4, wobble=0.35, size=size)
    mask = distance < 1.0
    # Feathered edge: alpha is 1 well inside, ~0.5 on the mask boundary, fading outside.
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(radius * 0.2, 1.0))
    # Uneven concentration inside the stain.
    mottling = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), max(radius * 0.3, 3.0))
    blotch = 0.85 + 0.15 * _normalised(mottling)
    colour = _STAIN_COLOURS[int(rng.integers(len(_STAIN_COLOURS)))]
    delta = (amplitude * alpha * np.clip(blotch, 0.5, 1.2))[..., None] * colour
    return delta, mask


_DEFECTS: dict[str, Callable[[np.random.Generator, float, int], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
}
# Stream ids keep each folder's random numbers independent of the others and of file order.
_STREAM_IDS = {"train/good": 0, "test/good": 1, "test/scratch": 2, "test/hole": 3, "test/stain": 4}


def defect_contrasts(count: int = DEFECT_COUNT) -> np.ndarray:
    """Defect amplitude per index (intensity units, 0..1 scale), falling from obvious to faint."""
    return TEXTURE_NOISE * np.geomspace(STRONGEST_CONTRAST, FAINTEST_CONTRAST, count)


# --------------------------------------------------------------------------- writing


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # noisy textures barely compress
    return buffer.getvalue()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_tree(folder: Path, seed: int) -> None:
    """Write the whole dataset (images, masks, README) into `folder`."""
    for group, count in (("train/good", TRAIN_GOOD_COUNT), ("test/good", TEST_GOOD_COUNT)):
        (folder / group).mkdir(parents=True)
        for index in range(count):
            rng = np.random.default_rng([seed, _STREAM_IDS[group], index])
            (folder / group / f"{index:03d}.png").write_bytes(_png_bytes(_to_uint8(_surface(rng))))
    for defect_type, draw in _DEFECTS.items():
        group = f"test/{defect_type}"
        (folder / group).mkdir(parents=True)
        (folder / "ground_truth" / defect_type).mkdir(parents=True)
        for index, amplitude in enumerate(defect_contrasts()):
            rng = np.random.default_rng([seed, _STREAM_IDS[group], index])
            texture = _surface(rng)
            delta, mask = draw(rng, float(amplitude), IMAGE_SIZE)
            (folder / group / f"{index:03d}.png").write_bytes(_png_bytes(_to_uint8(texture + delta)))
            mask_file = folder / "ground_truth" / defect_type / f"{index:03d}_mask.png"
            mask_file.write_bytes(_png_bytes(mask.astype(np.uint8) * 255))
    contrasts = ", ".join(f"{value / TEXTURE_NOISE:.2f}" for value in defect_contrasts())
    (folder / "README.txt").write_text(
        f"Synthetic demo dataset '{DEMO_CATEGORY}', generated by inspection.demo "
        f"(generator version {GENERATOR_VERSION}, seed {seed}).\n"
        f"Brushed-metal texture, {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNG, MVTec AD layout:\n"
        f"  train/good: {TRAIN_GOOD_COUNT}, test/good: {TEST_GOOD_COUNT}, "
        f"test/scratch, test/hole, test/stain: {DEFECT_COUNT} each,\n"
        "  ground_truth/<type>/<stem>_mask.png: exact masks (0/255) from the drawing geometry.\n"
        "Defect contrast falls from obvious (000) to faint (last) within each type; in units of the\n"
        f"texture's noise level it is: {contrasts}.\n"
        "Not real data: for trying the tools out, not for judging a method on real products.\n",
        encoding="utf-8",
    )


def _marker(seed: int) -> dict:
    return {"generator": "inspection.demo", "version": GENERATOR_VERSION, "seed": seed, "category": DEMO_CATEGORY}


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path, seed: int) -> bool:
    return _read_marker(folder) == _marker(seed)


def generate_demo_dataset(root: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write ROOT/surface/ in MVTec layout (atomically) and return it; reuse it if already complete.

    A folder from another generator version or seed is replaced; a `surface` folder without our
    marker file is someone else's and is never touched (FileExistsError).
    """
    seed = int(seed)
    root_path = Path(root).expanduser()
    target = root_path / DEMO_CATEGORY
    if _is_complete(target, seed):
        return target
    if target.exists() and _read_marker(target) is None:
        raise FileExistsError(
            f"{target}: exists but was not generated by inspection.demo (no {MARKER_NAME}); "
            "move it away or choose another root"
        )
    root_path.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{DEMO_CATEGORY}-building-", dir=root_path))
    try:
        _write_tree(building, seed)
        # The marker goes last: a folder carrying it is complete by construction.
        (building / MARKER_NAME).write_text(json.dumps(_marker(seed), sort_keys=True), encoding="utf-8")
        os.chmod(building, 0o755)  # mkdtemp makes it private; the dataset is ordinary data
        if target.exists():  # an outdated version or another seed: swap it out
            retired = Path(tempfile.mkdtemp(prefix=f".{DEMO_CATEGORY}-old-", dir=root_path))
            os.replace(target, retired / DEMO_CATEGORY)
            shutil.rmtree(retired, ignore_errors=True)
        try:
            os.rename(building, target)
        except OSError:
            # Another process may have finished the same dataset first; theirs is as good as ours.
            if not _is_complete(target, seed):
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def default_demo_root() -> Path:
    """Where the demo dataset lives: env INSPECTION_DATA_DIR, else ~/.cache/inspection/data."""
    configured = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "inspection" / "data"


def demo_dataset(root: str | os.PathLike | None = None) -> Path:
    """The demo dataset's category folder, generating it on first use."""
    return generate_demo_dataset(root if root is not None else default_demo_root())
