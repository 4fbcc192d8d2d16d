"""PaDiM (Defard et al., ICPR 2021): a Gaussian per patch position over pretrained features.

Three backbone levels are brought to the finest level's grid and concatenated; a seeded random subset of
d channels is kept. For every position, the mean and covariance (+ εI) of the good images' embeddings
are estimated (streamed: sums in float64, never all embeddings at once); a test patch's score is its
Mahalanobis distance, computed batched on the device. The map is upsampled and blurred (σ=4); the image
score is the map's maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import ModelFileError
from ..model.backbone_model import BackboneModel
from ..model.common_params import map_blur
from ..model.fields import require_tensor
from ..ops.smoothing import gaussian_blur, upsample
from ..params import setting
from ..progress import Progress, ProgressCallback


class PaDiM(BackboneModel):
    name = "padim"
    description = "A Gaussian per patch position over pretrained features; score = Mahalanobis distance."
    feature_strides = (4, 8, 16)
    # Not aspect (images of other sizes have other positions) nor tiles (a tile position is no part position).
    capabilities = BackboneModel.capabilities.extended(
        export_refused="",
        resize_modes_reason="it learns one Gaussian per patch position, so every image must show the part on one "
                            "fixed grid of positions (use full to keep the whole part)",
        stages={"covariance": "Estimating the Gaussians"})

    n_features: int = setting(100, "d: number of randomly chosen feature channels kept. More describe the surface "
                              "better, at a cost growing with d² in memory and time per position.", minimum=1,
                              maximum=4096)
    epsilon: float = setting(0.01, "Added to the covariance's diagonal (εI) so it can be inverted; raise it when few "
                             "good images make the covariances unstable.", minimum=0.0, maximum=10.0)
    sigma: float = map_blur(4.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channel_index: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.inverse_covariance: torch.Tensor | None = None

    def _choose_channels(self) -> torch.Tensor:
        """The seeded random subset of d channels kept (sorted)."""
        total = sum(self.layer_channels())
        generator = torch.Generator().manual_seed(self.seed)
        n_kept = min(self.n_features, total)
        return torch.randperm(total, generator=generator)[:n_kept].sort().values

    def embed(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings [B, d, h, w] on the finest chosen layer's grid, from the chosen layers' feature maps."""
        grid = maps[0].shape[-2:]
        # Nearest upsampling: each coarse feature is copied onto the fine cells it covers, as in the paper.
        maps = [feature if feature.shape[-2:] == grid else F.interpolate(feature, size=grid, mode="nearest")
                for feature in maps]
        return torch.cat(maps, dim=1)[:, self.channel_index.to(maps[0].device)]

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        self.channel_index = self._choose_channels()
        total, sums, outer_sums = 0, None, None
        for images in batches():
            embedding = self.embed(self.features(images))
            batch, channels = embedding.shape[:2]
            per_position = embedding.double().reshape(batch, channels, -1).permute(2, 0, 1)  # [P, B, d]
            if sums is None:
                sums = torch.zeros(per_position.shape[0], channels, dtype=torch.float64, device=images.device)
                outer_sums = torch.zeros(per_position.shape[0], channels, channels, dtype=torch.float64,
                                         device=images.device)
            sums += per_position.sum(1)
            outer_sums.baddbmm_(per_position.transpose(1, 2), per_position)  # in place: no [P, d, d] temporary
            total += batch
            progress(Progress("features", total, n_images))
        if total < 2:
            raise ValueError("PaDiM needs at least 2 good images to estimate covariances")
        mean = sums / total
        # The covariance is built in the outer sums' memory, and inverted a block of positions at a time,
        # so fitting holds one float64 [P, d, d] array, not three.
        covariance = outer_sums.baddbmm_(mean[:, :, None], mean[:, None, :], alpha=-total).div_(total - 1)
        covariance.diagonal(dim1=1, dim2=2).add_(self.epsilon)
        inverse = torch.empty(covariance.shape, dtype=torch.float32, device=covariance.device)
        for start in range(0, covariance.shape[0], 256):
            inverse[start: start + 256] = torch.linalg.inv(covariance[start: start + 256])
        progress(Progress("covariance", 1, 1))
        self.mean = mean.float()
        self.inverse_covariance = inverse

    def score_features(self, features: list[torch.Tensor], size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(features)
        batch, channels, height, width = embedding.shape
        # [P, B, d], contiguous: a strided operand sends bmm down a slow per-matrix path.
        delta = (embedding.reshape(batch, channels, -1).permute(2, 0, 1) - self.mean[:, None, :]).contiguous()
        squared = (torch.bmm(delta, self.inverse_covariance) * delta).sum(-1)  # [P, B]
        distances = squared.clamp_min(0).sqrt().T.reshape(batch, height, width)
        maps = gaussian_blur(upsample(distances, size), self.sigma)
        return maps, maps.flatten(1).max(dim=1).values

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "inverse_covariance": self.inverse_covariance, "channel_index": self.channel_index}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        mean = require_tensor(state, "mean", ndim=2)
        inverse = require_tensor(state, "inverse_covariance", ndim=3)
        index = require_tensor(state, "channel_index", ndim=1, integer=True)
        positions, channels = mean.shape
        if (index.numel() != channels or inverse.shape != (positions, channels, channels) or index.min() < 0
                or int(index.max()) >= sum(self.layer_channels())):
            raise ModelFileError(f"PaDiM statistics (mean {tuple(mean.shape)}, inverse covariance "
                                 f"{tuple(inverse.shape)}, {index.numel()} channels) do not fit backbone "
                                 f"{self.backbone} layers {self.layer_names}")
        self.mean, self.inverse_covariance, self.channel_index = mean.float(), inverse.float(), index.long().cpu()
