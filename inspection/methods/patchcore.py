"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features of good images.

Patch features of two backbone levels are averaged over their p×p neighbourhood, brought to the finer
level's grid and concatenated; a greedy k-center coreset of all good patches (selected on a random
projection) is the memory bank. A test patch's score is the distance to its nearest bank patch; the
map is upsampled bilinearly and blurred (σ=4), and the image score is the largest patch score,
optionally re-weighted as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelFileError
from ..model.backbone_model import BackboneModel
from ..model.common_params import map_blur
from ..model.fields import require_tensor
from ..model.heldout import HeldoutChunk
from ..ops.coreset import chunked_coreset, covering_radius, extend_coreset
from ..ops.knn import nearest_neighbors
from ..ops.smoothing import gaussian_blur, upsample
from ..params import setting
from ..progress import Progress, ProgressCallback


class PatchCore(BackboneModel):
    """PatchCore: a coreset of good patch features; a patch's score is its distance to the nearest one."""

    name = "patchcore"
    description = "Memory bank of pretrained patch features (coreset); score = distance to the nearest good patch."
    feature_strides = (8, 16)
    # A memory bank compares each patch with every good patch wherever it lies: any working size will do.
    capabilities = BackboneModel.capabilities.extended(resize_modes=("center_crop", "full", "aspect", "tiles"),
                                                       stages={"coreset": "Selecting the memory bank (coreset)"},
                                                       export_refused="", teach_refused="")
    # The whole part by default, its aspect kept: a centre crop leaves defects near the edges unseen
    # (bench/patchcore-modes/).
    default_overrides = {"resize_mode": "aspect"}

    coreset_ratio: float = setting(0.01, "Share of all good patches kept in the memory bank (greedy k-center). Raise "
                                   "it when good parts vary a lot (fewer false alarms, slower scoring).",
                                   minimum=1e-5, maximum=1.0)
    coreset_chunk: int = setting(0, "Select the bank chunk by chunk as the good images' features arrive: each chunk of "
                                 "about this many patches gives its share (coreset_ratio) of the bank. Bounds fit "
                                 "memory, and shortens the selection, at a cost in coverage (0: one selection over all "
                                 "patches, the exact greedy). Set it only when fitting runs out of memory.", minimum=0,
                                 maximum=100_000_000, note="0 = all patches at once")
    projection_dim: int = setting(128, "Dimension of the random projection the coreset is selected on (0: select on "
                                  "the full features, slower).", minimum=0, maximum=4096, note="0 = full features")
    embed_dim: int = setting(0, "Reduce each patch feature to this many channels by average pooling (0: keep all; "
                             "the paper uses 1024 with Wide-ResNet50). Lower it to shrink the bank and speed scoring.",
                             minimum=0, maximum=8192, note="0 = keep all")
    neighbourhood: int = setting(3, "Local aggregation: average each feature over its p×p neighbourhood (odd). Wider "
                                 "sees larger structures and misses small defects.", minimum=1, maximum=9, odd=True)
    reweight: bool = setting(False, "Re-weight the image score by how dense the bank is around the match (the paper's "
                             "Eq. 7).")
    reweight_neighbors: int = setting(9, "Bank neighbours used by the re-weighting.", minimum=1, maximum=100)
    sigma: float = map_blur(4.0)
    image_score: str = setting("patch", "The image score: the largest patch score (the paper's), or the largest value "
                               "of the blurred map, which a single odd patch moves less (try it when good parts raise "
                               "false alarms from one spot).", choices=("patch", "map"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.memory_bank: torch.Tensor | None = None

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim or sum(self.layer_channels())

    def embed(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings [B·h·w, C] on the finest chosen layer's grid (h, w), from the chosen layers' feature
        maps."""
        size = self.neighbourhood
        if size > 1:
            # Zero padding counted in the average, as in the official code: border patches stay recognisable
            # as borders (excluding the padding lowered both AUROCs on Magnetic-Tile, in a side experiment).
            maps = [F.avg_pool2d(feature, size, stride=1, padding=size // 2) for feature in maps]
        grid = maps[0].shape[-2:]
        maps = [feature if feature.shape[-2:] == grid else
                F.interpolate(feature, size=grid, mode="bilinear", align_corners=False) for feature in maps]
        patches = torch.cat(maps, dim=1).permute(0, 2, 3, 1).reshape(-1, sum(m.shape[1] for m in maps))
        if self.embed_dim:
            patches = F.adaptive_avg_pool1d(patches[:, None, :], self.embed_dim)[:, 0]
        return patches, (int(grid[0]), int(grid[1]))

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        # The bank is selected chunk by chunk as the features arrive: fit memory stays that of one chunk plus
        # the bank, and selection costs chunk patches × chunk selections instead of all patches × all selections.
        def embedded() -> Iterator[torch.Tensor]:
            seen = 0
            for images in batches():
                patches = self.embed(self.features(images))[0]
                seen += images.shape[0]
                progress(Progress("features", seen, n_images))
                yield patches

        bank = [patches[chosen] for patches, chosen in chunked_coreset(
            embedded(), self.coreset_ratio, self.coreset_chunk, self.projection_dim,
            self.seed, progress=lambda step, total: progress(Progress("coreset", step, total)))]
        self.memory_bank = torch.cat(bank).contiguous()

    def score_features(self, features: list[torch.Tensor], size: tuple[int, int],
                       content: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        patches, (height, width) = self.embed(features)
        batch = features[0].shape[0]
        with torch.no_grad():  # the search picks the matches; it is not differentiated
            distances, indices = nearest_neighbors(patches.detach(), self.memory_bank, k=1)
        distances, matches = distances[:, 0], indices[:, 0]
        if patches.requires_grad:
            # For a gradient (explanations), the distance to the matched bank rows, held fixed, is recomputed with
            # autograd: the same value, differentiable in the features. Plain scoring skips this gather.
            distances = (patches - self.memory_bank[matches]).norm(dim=1)
        patch_scores = distances.view(batch, height, width)
        source = None
        if content is not None:  # aspect mode: padding never raises a score
            patch_scores, source = _replicate_content(patch_scores, content, size)
        image_scores, argmax = patch_scores.flatten(1).max(dim=1)
        if source is not None:  # the content patch the maximum came from (for the re-weighting)
            argmax = source.flatten(1).gather(1, argmax[:, None])[:, 0]
        maps, image_scores = self._map_and_score(patch_scores, image_scores, size)
        if self.reweight:  # weighed at the most anomalous patch, whichever score it scales
            image_scores = image_scores * self._reweighting(patches.view(batch, height * width, -1),
                                                            matches.view(batch, -1), argmax)
        return maps, image_scores

    def _map_and_score(self, patch_scores: torch.Tensor, image_scores: torch.Tensor, size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The map at the working size from the patch scores [B, h, w], and the image score by `image_score` (the
        largest patch score `image_scores`, or the map's largest value)."""
        maps = gaussian_blur(upsample(patch_scores, size), self.sigma)
        return maps, maps.flatten(1).amax(dim=1) if self.image_score == "map" else image_scores

    def _heldout_extras(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # Taught rows are only appended to the bank: the held-out patches' distances to the bank of fit, kept, leave
        # only the taught rows to search when they are scored again.
        patches, grid = self.embed(features)
        distances = nearest_neighbors(patches, self.memory_bank, k=1)[0][:, 0]
        return {"distances": distances.view(features[0].shape[0], *grid).cpu(),
                "bank_rows": torch.tensor([self.memory_bank.shape[0]])}

    def _score_heldout(self, chunk: HeldoutChunk) -> torch.Tensor:
        fit_rows = int(chunk.extras["bank_rows"][0]) if "bank_rows" in chunk.extras else -1
        if self.reweight or not 0 < fit_rows <= self.memory_bank.shape[0]:
            return super()._score_heldout(chunk)  # every patch searched against the whole bank
        patch_scores = chunk.extras["distances"].to(self.torch_device)
        if self.memory_bank.shape[0] > fit_rows:
            features = [feature.to(self.torch_device, torch.float32) for feature in chunk.features]
            taught = nearest_neighbors(self.embed(features)[0], self.memory_bank[fit_rows:], k=1)[0][:, 0]
            patch_scores = torch.minimum(patch_scores, taught.view_as(patch_scores))
        if chunk.content is not None:
            patch_scores = _replicate_content(patch_scores, chunk.content.to(self.torch_device), chunk.size)[0]
        return self._map_and_score(patch_scores, patch_scores.flatten(1).amax(dim=1), chunk.size)[1]

    def _reweighting(self, patches: torch.Tensor, matches: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
        """1 − softmax weight of the match among its bank neighbours (the paper's Eq. 7), per image."""
        rows = torch.arange(patches.shape[0], device=patches.device)
        worst_patch = patches[rows, argmax]  # [B, C]
        match = matches[rows, argmax]  # [B]
        _, neighbours = nearest_neighbors(self.memory_bank[match], self.memory_bank,
                                          k=self.reweight_neighbors + 1)  # includes the match itself
        distances = (worst_patch[:, None, :] - self.memory_bank[neighbours]).norm(dim=2)
        return 1.0 - torch.softmax(distances, dim=1)[:, 0]

    def learn_good(self, images: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """The images' patches the bank does not cover join it: one incremental step of the greedy k-center that
        selected the bank — the farthest patch first — while a patch lies farther than the bank's own covering
        radius from every centre. Returns the rows added, for `unlearn`.

        Distances and radius are those of the scores (the full features), not of the random projection the fit's
        selection ran on: a radius read on the projection (larger there, by the projection's error at its
        extremes) left taught tiles flagged and moved no unseen tile (bench/teach/). The radius is kept in `state`,
        the model's teaching state, from the first time it is taught."""
        if "covering_radius" not in state:
            state["covering_radius"] = covering_radius(self.memory_bank)
        patches = self.embed(self.features(images))[0]
        distances = nearest_neighbors(patches, self.memory_bank, k=1)[0][:, 0]
        added = extend_coreset(patches, distances, float(state["covering_radius"]))
        self.memory_bank = torch.cat([self.memory_bank, patches[added]]).contiguous()
        return {"rows_added": int(added.numel())}

    def unlearn(self, record: Mapping[str, Any]) -> None:
        """The bank before the decision `record` was learned: its added rows (the last ones) dropped."""
        rows = int(record.get("rows_added", 0))
        if rows:
            self.memory_bank = self.memory_bank[:-rows].contiguous()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.memory_bank}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        bank = require_tensor(state, "memory_bank", ndim=2)
        if bank.shape[1] != self.embedding_dim or bank.shape[0] == 0:
            raise ModelFileError(f"memory bank of shape {tuple(bank.shape)} does not fit backbone "
                                 f"{self.backbone} layers {self.layer_names} ({self.embedding_dim} channels "
                                 "expected)")
        self.memory_bank = bank.float()


def _replicate_content(grid_scores: torch.Tensor, content: torch.Tensor, size: torch.Size
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch scores [B, h, w] whose patches centre on padding replaced by the nearest content patch's score, and
    [B, h, w] the flat index (into h·w) of the patch each score now comes from.

    The image score (the maximum) and the upsampled, blurred map then come from content patches only; `content`
    [B, 2] holds each image's content height and width in pixels of the working size `size`.
    """
    batch, height, width = grid_scores.shape
    cell = content.new_tensor([size[0] // height, size[1] // width])
    # The last row / column whose patch centre lies inside the content.
    last = ((content - cell // 2 - 1).div(cell, rounding_mode="floor")).clamp_min(0)
    rows = torch.minimum(torch.arange(height, device=content.device)[None, :], last[:, :1])  # [B, h]
    columns = torch.minimum(torch.arange(width, device=content.device)[None, :], last[:, 1:])  # [B, w]
    images = torch.arange(batch, device=content.device)[:, None, None]
    source = rows[:, :, None] * width + columns[:, None, :]
    return grid_scores[images, rows[:, :, None], columns[:, None, :]], source
