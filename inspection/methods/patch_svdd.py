"""Patch SVDD (Yi & Yoon, ACCV 2020): a patch encoder trained on good images, scored by the nearest normal patch.

The encoder (the seed's ``EncoderHier``) embeds a 64×64 patch by encoding its four 32×32 sub-patches with
eight valid 3×3 convolutions (LeakyReLU 0.1, tanh output, D = 64) and combining the 2×2 result. It is trained
with the SVDD' loss (a patch and a slightly shifted one should embed close together) plus self-supervised
relative-position classification (which of its 8 neighbours in a 3×3 grid a second patch is), at K = 64 and
K = 32 jointly: loss = CE64 + CE32 + λ (SVDD'64 + SVDD'32).

Because every convolution is valid (no padding), the encoder run on a whole image gives, at each cell of its
output grid, exactly the embedding of the patch there: training gathers thousands of patch pairs from one
forward pass, and scoring embeds every patch of an image at once instead of cropping each. The memory is
every patch of the good images (K = 64 at stride 16, K = 32 at stride 4), optionally cut down by the greedy
coreset; a test patch's score is its L2 distance to the nearest memory patch (chunked search on the device),
each pixel takes the mean score of the patches covering it, the two scales are multiplied (or summed), and
the image score is the map's maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError, ParameterError
from ..features.mobilenet import WIDTH_MULTIPLIERS, scaled_channels
from ..model.base import AnomalyModel
from ..model.capabilities import Capabilities
from ..model.fields import require_tensor
from ..ops.coreset import greedy_coreset
from ..ops.knn import nearest_neighbors
from ..params import setting
from ..progress import Progress, ProgressCallback

#: Patch sides of the two scales, and the stride at which scoring embeds their patches (the seed's choices).
SMALL_PATCH, LARGE_PATCH = 32, 64
SCORE_STRIDES = {SMALL_PATCH: 4, LARGE_PATCH: 16}
#: The 32-pixel encoder's output grid has stride 2 (its first convolution): every position it can embed.
ENCODER_STRIDE = 2
#: (Δrow, Δcolumn) of the 8 neighbours in a 3×3 grid; a position pair's label is the index in this list.
NEIGHBOUR_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
#: Standard deviation of the per-channel colour shift and of the per-pixel noise added to each training view.
#: The seed's 0.02 is on pixel values / 255; inputs here are scaled to [-1, 1], twice that range.
PERTURBATION_STD = 0.04
#: Default working side (resize and crop): the whole image, as in the seed, at a size a CPU scores quickly.
WORKING_SIDE = 160


# ----------------------------------------------------------------------------------------------------------
# Encoder


class PatchEncoder(nn.Module):
    """The 32×32 patch encoder (the seed's ``EncoderDeep``): 8 valid 3×3 convolutions, LeakyReLU 0.1, tanh.

    A 32×32 patch gives [B, D, 1, 1]; a larger image gives the embeddings of all its 32×32 patches at stride 2.
    ``separable`` makes layers 2–8 MobileNet V1 depthwise-separable blocks (3×3 depthwise, LeakyReLU, 1×1
    pointwise) with the same widths and receptive field; ``width_mult`` (MobileNet's α) thins the hidden layers.
    """

    CHANNELS = (32, 64, 128, 128, 64, 32, 32)

    def __init__(self, dim: int = 64, separable: bool = False, width_mult: float = 1.0):
        super().__init__()
        widths = (3, *(scaled_channels(channels, width_mult) for channels in self.CHANNELS), dim)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[1], 3, stride=2)]
        for in_channels, out_channels in zip(widths[1:-1], widths[2:]):
            layers.append(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, groups=in_channels),
                                        nn.LeakyReLU(0.1), nn.Conv2d(in_channels, out_channels, 1))
                          if separable else nn.Conv2d(in_channels, out_channels, 3))
        self.convs = nn.ModuleList(layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = images
        for conv in self.convs[:-1]:
            hidden = F.leaky_relu(conv(hidden), 0.1)
        return torch.tanh(self.convs[-1](hidden))


class HierarchicalEncoder(nn.Module):
    """The 64×64 patch encoder (the seed's ``EncoderHier``): the 32×32 encoder on the 2×2 sub-patches, combined.

    ``inner`` is the 32×32 encoder itself (trained jointly at K = 32); ``combine`` (2×2 convolution, D → 128)
    and ``project`` (1×1, 128 → D) merge the four sub-patch embeddings.
    """

    def __init__(self, dim: int = 64, separable: bool = False, width_mult: float = 1.0):
        super().__init__()
        self.inner = PatchEncoder(dim, separable, width_mult)
        self.combine = nn.Conv2d(dim, 128, 2)
        self.project = nn.Conv2d(128, dim, 1)
        # He initialisation for LeakyReLU(0.1): with PyTorch's default the signal shrinks about 3× per layer, so
        # 10 layers start near zero (tanh outputs ~1e-3) and the first epochs are spent only scaling back up.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of every 64×64 patch of `images` at stride 2 ([B, D, 1, 1] for a 64×64 input)."""
        return self.combine_grid(self.inner(images))

    def combine_grid(self, small: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """64×64 patch embeddings from the 32×32 ones on their stride-2 grid, every `stride` cells.

        The four sub-patches of a 64×64 patch lie 32 pixels = 16 cells apart: the 2×2 combining convolution,
        dilated by 16, reads exactly them at every position — the seed's crop-and-stack, for all patches at once.
        """
        dilation = LARGE_PATCH // 2 // ENCODER_STRIDE
        hidden = F.conv2d(small, self.combine.weight, self.combine.bias, stride=stride, dilation=dilation)
        return torch.tanh(self.project(F.leaky_relu(hidden, 0.1)))

    def embed_for_scoring(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding grids [B, D, h, w] of every 32×32 patch at stride 4 and every 64×64 patch at stride 16."""
        small = self.inner(images)
        small_step = SCORE_STRIDES[SMALL_PATCH] // ENCODER_STRIDE
        large = self.combine_grid(small, stride=SCORE_STRIDES[LARGE_PATCH] // ENCODER_STRIDE)
        return small[:, :, ::small_step, ::small_step], large


class PositionClassifier(nn.Module):
    """Which of the 8 neighbours the second patch is, from the difference of the two embeddings (3 layers)."""

    def __init__(self, dim: int = 64, hidden: int = 128):
        super().__init__()
        self.layer_names = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, hidden),
                                    nn.LeakyReLU(0.1), nn.Linear(hidden, len(NEIGHBOUR_DIRECTIONS)))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.layer_names(first - second)


# ----------------------------------------------------------------------------------------------------------
# Training pairs and score spreading: small functions, tested on their own


def _grid_limit(height: int, width: int, patch: int, step: int) -> torch.Tensor:
    """The largest top-left corner (row, column) of a patch inside the image, on the `step` grid."""
    if height < patch or width < patch:
        raise ValueError(f"a {patch}×{patch} patch does not fit in a {height}×{width} image")
    return torch.tensor([(height - patch) // step * step, (width - patch) // step * step])


def _random_corners(count: int, limit: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
    cells = torch.rand(count, 2, generator=generator) * (limit // step + 1)
    return cells.long().minimum(limit // step) * step


def sample_position_pairs(count: int, height: int, width: int, patch: int, generator: torch.Generator,
                          step: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patch pairs for relative-position classification: (first [n, 2], second [n, 2], label [n]).

    Corners are (row, column) of patches of side `patch`, on a grid of `step` pixels. The second patch is the
    first's neighbour in direction ``NEIGHBOUR_DIRECTIONS[label]`` at a distance of 3K/4 plus a jitter in
    [0, K/4) per axis (so neighbours barely overlap and the exact offset is no cue), clipped into the image
    as in the seed — near a border the second patch is pushed back inside.
    """
    limit = _grid_limit(height, width, patch, step)
    first = _random_corners(count, limit, step, generator)
    labels = torch.randint(len(NEIGHBOUR_DIRECTIONS), (count,), generator=generator)
    jitter = torch.randint(max(1, patch // 4 // step), (count, 2), generator=generator) * step
    offsets = torch.tensor(NEIGHBOUR_DIRECTIONS)[labels] * (3 * patch // 4 + jitter)
    second = (first + offsets).clamp_min(0).minimum(limit)
    return first, second, labels


def sample_nearby_pairs(count: int, height: int, width: int, patch: int, generator: torch.Generator,
                        step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch pairs for the SVDD' loss: (first [n, 2], second [n, 2]), the second shifted by a small jitter.

    The shift is up to K/32 pixels per axis (the seed's), at least one grid step, never zero; clipped into
    the image.
    """
    limit = _grid_limit(height, width, patch, step)
    first = _random_corners(count, limit, step, generator)
    reach = max(1, patch // 32 // step)
    shifts = torch.tensor([(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
                           if (dy, dx) != (0, 0)]) * step
    second = (first + shifts[torch.randint(len(shifts), (count,), generator=generator)]).clamp_min(0).minimum(limit)
    return first, second


def spread_patch_scores(scores: torch.Tensor, patch: int, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Pixel maps [B, H, W] from patch scores [B, h, w]: each pixel gets the mean score of the patches covering it.

    Patch (i, j) covers rows [i·stride, i·stride + patch) and columns alike. A transposed convolution with a
    patch×patch kernel of ones sums the covering scores at every pixel in one operation (and counts them);
    pixels past the last patch (when the image is not a whole number of strides) take the nearest value.
    """
    kernel = torch.ones(1, 1, patch, patch, dtype=scores.dtype, device=scores.device)
    total = F.conv_transpose2d(scores[:, None], kernel, stride=stride)
    count = F.conv_transpose2d(torch.ones_like(scores[:1, None]), kernel, stride=stride)
    mean = total / count
    height, width = size
    missing_rows, missing_columns = height - mean.shape[-2], width - mean.shape[-1]
    if missing_rows < 0 or missing_columns < 0:
        raise ValueError(f"{scores.shape[-2]}×{scores.shape[-1]} patches of {patch} px at stride {stride} "
                         f"do not fit in {height}×{width}")
    if missing_rows or missing_columns:
        mean = F.pad(mean, (0, missing_columns, 0, missing_rows), mode="replicate")
    return mean[:, 0]


def _gather(grid: torch.Tensor, images: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Embeddings [n, D] of the patches at pixel `corners` [n, 2] of `images` [n] from a stride-2 grid [B, D, h, w]."""
    cells = corners // ENCODER_STRIDE
    return grid[images, :, cells[:, 0], cells[:, 1]]


def _check_patch_sizes(values: Mapping[str, Any]) -> None:
    if values["crop"] < LARGE_PATCH:
        raise ParameterError(f"parameter 'crop' ({values['crop']}) must be at least {LARGE_PATCH} for "
                             f"patch_svdd: it embeds {LARGE_PATCH}×{LARGE_PATCH} patches")
    if values["train_crop"] and not LARGE_PATCH <= values["train_crop"] <= values["crop"]:
        raise ParameterError(f"parameter 'train_crop' ({values['train_crop']}) must be 0 or between "
                             f"{LARGE_PATCH} and 'crop' ({values['crop']})")


# ----------------------------------------------------------------------------------------------------------
# The method


class PatchSVDD(AnomalyModel):
    name = "patch_svdd"
    description = ("Patch encoder trained on good images (SVDD' + relative-position classification, K = 64 and "
                   "32); score = distance to the nearest good patch, two scales multiplied.")
    capabilities = Capabilities(trains_by_gradient=True, stages={
        "epoch": "Training the patch encoder", "memory": "Embedding every patch of the good images",
        "coreset": "Selecting the memory of normal patches (coreset)"},
        export_refused="")
    # The whole image at 160 px (the seed uses the whole image at 256): every patch of every good image is in the
    # memory, so the nearest-patch search grows with the side to the 4th power; 160 keeps a default fit and
    # evaluation on a small CPU within minutes (bench/learned/). Both remain settings.
    default_overrides = {"resize": WORKING_SIDE, "crop": WORKING_SIDE}
    param_rules = (_check_patch_sizes,)

    lambda_svdd: float = setting(1e-3, "λ: weight of the SVDD' loss (nearby patches embed close together) against "
                                 "relative-position classification. Class-sensitive: objects (bottle, screw, …) like "
                                 "a small λ (1e-3), textures (carpet, tile, …) a large one (1).",
                                 minimum=0.0, maximum=1e3)
    epochs: int = setting(8, "Training passes over the good images (each image once per pass). More keep lowering "
                          "the loss and raise accuracy a little, at a proportional cost in fit time (bench/learned/).",
                          minimum=1, maximum=10000)
    learning_rate: float = setting(1e-3, "Adam learning rate of the encoder and the position classifiers.",
                                   minimum=1e-6, maximum=1.0)
    images_per_step: int = setting(8, "Images per training step (two perturbed views of each).", minimum=1, maximum=256)
    pairs_per_image: int = setting(128, "Patch pairs of each kind (position and SVDD', at each scale) drawn from "
                                   "every image per step; one forward pass embeds them all.", minimum=1, maximum=100000)
    train_crop: int = setting(0, "Side of the random square each training step cuts from the images (0: the whole "
                              "image). Smaller is faster per step; neighbours near its border are clipped more "
                              "often.", minimum=0, maximum=4096, note="0 = whole image")
    embedding_dim: int = setting(64, "D: size of a patch embedding.", minimum=2, maximum=1024)
    encoder: str = setting("standard", "standard: the paper's 8 convolutions of 3×3; mobilenet_v1: layers 2–8 as "
                           "MobileNet V1 depthwise-separable blocks (3×3 depthwise + 1×1 pointwise, same widths and "
                           "patch size), several times fewer mult-adds. Trained here from scratch either way (no "
                           "ImageNet MobileNet V1 weights exist).", choices=("standard", "mobilenet_v1"))
    encoder_width: float = setting(1.0, "Width multiplier α of the encoder's hidden layers (MobileNet's α): 0.5 has "
                                   "about a quarter of the mult-adds.", choices=WIDTH_MULTIPLIERS)
    combine: str = setting("product", "How the two scales' maps are combined: product (the paper's), or sum.",
                           choices=("product", "sum"))
    coreset: bool = setting(False, "Keep only a greedy k-center coreset of the normal patches as the memory: scoring "
                            "searches ratio × fewer patches, several times faster, for a little accuracy.")
    coreset_ratio: float = setting(0.03, "Share of the normal patches kept at each scale when 'coreset' is on: "
                                   "lower scores faster and a little less accurately (bench/learned/).",
                                   minimum=1e-5, maximum=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.patch_encoder: HierarchicalEncoder | None = None
        self.memory_small: torch.Tensor | None = None
        self.memory_large: torch.Tensor | None = None

    def _new_encoder(self) -> HierarchicalEncoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return HierarchicalEncoder(self.embedding_dim, self.encoder == "mobilenet_v1",
                                       self.encoder_width).to(self.torch_device)

    # --- training -------------------------------------------------------------------------------------------

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        # Decoded once: every epoch and the memory reuse the preprocessed images instead of reading the files.
        images = torch.cat(list(batches()))
        self.patch_encoder = self._new_encoder()
        self._train(images, progress)
        self.patch_encoder.eval().requires_grad_(False)
        with torch.no_grad():
            self._build_memory(images, progress)

    def _train(self, images: torch.Tensor, progress: ProgressCallback) -> None:
        seed, dim = self.seed, self.embedding_dim
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            classifiers = nn.ModuleDict({str(SMALL_PATCH): PositionClassifier(dim),
                                         str(LARGE_PATCH): PositionClassifier(dim)}).to(self.torch_device)
        modules = nn.ModuleList([self.patch_encoder, classifiers]).train()
        optimizer = torch.optim.Adam(modules.parameters(), lr=self.learning_rate)
        epochs, per_step = self.epochs, self.images_per_step
        # Cosine decay to zero over the run: a short CPU training ends on settled weights, not mid-stride.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * math.ceil(len(images) / per_step))
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            losses = []
            for start in range(0, len(order), per_step):
                loss = self.training_loss(images[order[start: start + per_step].to(images.device)], classifiers,
                                          generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            progress(Progress("epoch", epoch + 1, epochs, loss=sum(losses) / len(losses)))

    def training_loss(self, images: torch.Tensor, classifiers: nn.ModuleDict,
                      generator: torch.Generator) -> torch.Tensor:
        """CE64 + CE32 + λ (SVDD'64 + SVDD'32) over pairs drawn from one batch of normalised images."""
        crop = self.train_crop
        if crop and crop < images.shape[-1] or crop and crop < images.shape[-2]:
            top = int(torch.randint(images.shape[-2] - crop + 1, (1,), generator=generator))
            left = int(torch.randint(images.shape[-1] - crop + 1, (1,), generator=generator))
            images = images[..., top: top + crop, left: left + crop]
        n_images, _, height, width = images.shape
        # Two independently perturbed views: the first patch of every pair comes from one, the second from the
        # other, so a colour shift or noise pattern shared by both can never tell their relative position.
        views = torch.cat([images, images])
        shift = torch.randn(len(views), 3, 1, 1, generator=generator).to(views.device)
        noise = torch.randn(views.shape, generator=generator).to(views.device)
        views = views + PERTURBATION_STD * (shift + noise)
        small = self.patch_encoder.inner(views)
        grids = {SMALL_PATCH: small, LARGE_PATCH: self.patch_encoder.combine_grid(small)}
        count = self.pairs_per_image
        owner = torch.arange(n_images, device=views.device).repeat_interleave(count)
        loss = torch.zeros((), device=views.device)
        for patch, grid in grids.items():
            first, second, labels = (t.to(views.device) for t in sample_position_pairs(
                n_images * count, height, width, patch, generator, ENCODER_STRIDE))
            logits = classifiers[str(patch)](_gather(grid, owner, first), _gather(grid, owner + n_images, second))
            loss = loss + F.cross_entropy(logits, labels)
            first, second = (t.to(views.device) for t in sample_nearby_pairs(
                n_images * count, height, width, patch, generator, ENCODER_STRIDE))
            distance = (_gather(grid, owner, first) - _gather(grid, owner + n_images, second)).norm(dim=1)
            loss = loss + self.lambda_svdd * distance.mean()
        return loss

    def _build_memory(self, images: torch.Tensor, progress: ProgressCallback) -> None:
        small, large = [], []
        batch = self.batch_size
        for start in range(0, len(images), batch):
            grid_small, grid_large = self.patch_encoder.embed_for_scoring(images[start: start + batch])
            small.append(_flatten(grid_small))
            large.append(_flatten(grid_large))
            progress(Progress("memory", min(start + batch, len(images)), len(images)))
        self.memory_small, self.memory_large = torch.cat(small), torch.cat(large)
        if self.coreset:
            self.memory_small = self._coreset(self.memory_small, progress)
            self.memory_large = self._coreset(self.memory_large, progress)

    def _coreset(self, memory: torch.Tensor, progress: ProgressCallback) -> torch.Tensor:
        n_select = max(1, math.ceil(self.coreset_ratio * len(memory)))
        generator = torch.Generator().manual_seed(self.seed)
        start = int(torch.randint(len(memory), (1,), generator=generator))
        selected = greedy_coreset(memory, n_select, start,
                                  progress=lambda step, total: progress(Progress("coreset", step, total)))
        return memory[selected].contiguous()

    # --- scoring --------------------------------------------------------------------------------------------

    def patch_scores(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Distance of every patch to its nearest normal patch, per scale: {K: [B, h, w]}."""
        grids = dict(zip((SMALL_PATCH, LARGE_PATCH), self.patch_encoder.embed_for_scoring(images)))
        memories = {SMALL_PATCH: self.memory_small, LARGE_PATCH: self.memory_large}
        scores = {}
        for patch, grid in grids.items():
            distances, _ = nearest_neighbors(_flatten(grid), memories[patch], k=1)
            scores[patch] = distances[:, 0].view(grid.shape[0], grid.shape[2], grid.shape[3])
        return scores

    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.preprocessing.size
        maps = [spread_patch_scores(scores, patch, SCORE_STRIDES[patch], size)
                for patch, scores in self.patch_scores(images).items()]
        combined = maps[0] * maps[1] if self.combine == "product" else maps[0] + maps[1]
        return combined, combined.flatten(1).max(dim=1).values

    # --- persistence ----------------------------------------------------------------------------------------

    def _state(self) -> dict[str, torch.Tensor | None]:
        if self.patch_encoder is None:
            return {"memory_small": None}
        return {**{f"encoder.{key}": value for key, value in self.patch_encoder.state_dict().items()},
                "memory_small": self.memory_small, "memory_large": self.memory_large}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        encoder = self._new_encoder()
        expected = encoder.state_dict()
        weights = {key: require_tensor(state, f"encoder.{key}") for key in expected}
        for key, tensor in weights.items():
            if tensor.shape != expected[key].shape:
                raise ModelFileError(f"encoder tensor {key!r} has shape {tuple(tensor.shape)}, "
                                     f"{tuple(expected[key].shape)} expected")
        unknown = sorted(set(state) - {f"encoder.{key}" for key in expected} - {"memory_small", "memory_large"})
        if unknown:
            raise ModelFileError(f"the model's tensors include unknown entries {unknown}")
        encoder.load_state_dict(weights)
        memories = {}
        for name in ("memory_small", "memory_large"):
            memory = require_tensor(state, name, ndim=2)
            if memory.shape[0] == 0 or memory.shape[1] != self.embedding_dim:
                raise ModelFileError(f"{name} of shape {tuple(memory.shape)} does not fit embedding_dim "
                                     f"{self.embedding_dim}")
            # A fresh allocation: the file's buffer may be aligned otherwise, and the matrix product's rounding
            # depends on alignment — the loaded model would score in the last bit unlike the saved one.
            memories[name] = memory.float().clone()
        self.patch_encoder = encoder.eval().requires_grad_(False)
        self.memory_small, self.memory_large = memories["memory_small"], memories["memory_large"]


def _flatten(grid: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] → [B·h·w, D], rows in (image, row, column) order."""
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])
