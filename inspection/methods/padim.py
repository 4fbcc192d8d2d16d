"""PaDiM (Defard et al., ICPR 2021): a Gaussian per patch position over pretrained features.

Three backbone levels are brought to the finest level's grid and concatenated; a seeded random subset of
d channels is kept. For every position, the mean and covariance (+ εI) of the good images' embeddings
are estimated (streamed: sums in float64, never all embeddings at once); a test patch's score is its
Mahalanobis distance, computed batched on the device. The map is upsampled and blurred (σ=4); the image
score is the map's maximum.

The fit's Gaussians (mean, covariance, count) are kept beside their inverses, and so are the embeddings of the
good images taught later (`inspection teach`): the Gaussians in use are always those of the fit's running sums
with the taught images' added, computed by one function, so that teaching equals fitting with the image and
undoing a decision gives back the very tensors it had before.
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
from ..ops.smoothing import gaussian_blur, upsample
from ..params import setting
from ..progress import Progress, ProgressCallback


class PaDiM(BackboneModel):
    name = "padim"
    description = "A Gaussian per patch position over pretrained features; score = Mahalanobis distance."
    feature_strides = (4, 8, 16)
    # Not aspect (images of other sizes have other positions) nor tiles (a tile position is no part position).
    capabilities = BackboneModel.capabilities.extended(
        export_refused="", teach_refused="",
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
        #: The fit's Gaussians (mean [P, d], covariance without εI [P, d, d], image count [1]) and the taught good
        #: images' embeddings [k, P, d]; files made before teaching have none of them (then nothing can be taught).
        self.fit_mean: torch.Tensor | None = None
        self.fit_covariance: torch.Tensor | None = None
        self.fit_count: torch.Tensor | None = None
        self.taught_embeddings: torch.Tensor | None = None

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
        # The covariance is built in the outer sums' memory, so fitting holds one float64 [P, d, d] array, not two.
        covariance = outer_sums.baddbmm_(mean[:, :, None], mean[:, None, :], alpha=-total).div_(total - 1)
        self.fit_mean, self.fit_count = mean.float(), torch.tensor([total], dtype=torch.float64)
        self.fit_covariance = covariance.float()
        del outer_sums, covariance
        self.taught_embeddings = torch.zeros(0, *self.fit_mean.shape, device=self.fit_mean.device)
        self._update_gaussians()
        progress(Progress("covariance", 1, 1))

    def _update_gaussians(self, block: int = 256) -> None:
        """The Gaussians in use (mean, inverse covariance + εI) from the fit's and the taught images' sums: n·mean and
        (n−1)·covariance + n·mean·meanᵀ are the fit's running sums; the taught embeddings add theirs. In float64, a
        block of positions at a time (one [block, d, d] temporary), inverted to float32."""
        fit_count = float(self.fit_count[0])
        taught = self.taught_embeddings.double()  # [k, P, d]
        count = fit_count + taught.shape[0]
        positions, channels = self.fit_mean.shape
        mean = torch.empty(positions, channels, dtype=torch.float32, device=self.fit_mean.device)
        inverse = torch.empty(positions, channels, channels, dtype=torch.float32, device=self.fit_mean.device)
        for start in range(0, positions, block):
            rows = slice(start, start + block)
            fit_mean = self.fit_mean[rows].double()
            sums = fit_mean * fit_count + taught[:, rows].sum(0)
            outer = self.fit_covariance[rows].double() * (fit_count - 1)
            outer.baddbmm_(fit_mean[:, :, None], fit_mean[:, None, :], alpha=fit_count)
            if taught.shape[0]:
                per_position = taught[:, rows].permute(1, 0, 2)  # [block, k, d]
                outer.baddbmm_(per_position.transpose(1, 2), per_position)
            block_mean = sums / count
            covariance = outer.baddbmm_(block_mean[:, :, None], block_mean[:, None, :], alpha=-count).div_(count - 1)
            covariance.diagonal(dim1=1, dim2=2).add_(self.epsilon)
            mean[rows] = block_mean.float()
            inverse[rows] = torch.linalg.inv(covariance).float()
        self.mean, self.inverse_covariance = mean, inverse

    def learn_good(self, images: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """The images join the Gaussians: their embeddings are added to the fit's running sums (kept in the file), as
        if they had been among the fitting images."""
        embedding = self.embed(self.features(images))
        batch, channels = embedding.shape[:2]
        added = embedding.float().reshape(batch, channels, -1).permute(0, 2, 1)  # [B, P, d]
        self.taught_embeddings = torch.cat([self.taught_embeddings, added.to(self.taught_embeddings.device)])
        self._update_gaussians()
        return {"embeddings_added": batch}

    def unlearn(self, record: Mapping[str, Any]) -> None:
        """The Gaussians before the decision `record`: its embeddings (the last ones) dropped, the rest summed as
        they were."""
        count = int(record.get("embeddings_added", 0))
        if count:
            self.taught_embeddings = self.taught_embeddings[:-count].contiguous()
            self._update_gaussians()

    def teach_refusal(self) -> str:
        if self.fitted and self.fit_covariance is None:
            return ("this PaDiM file was made before teaching existed and does not keep its Gaussians' sums: fit it "
                    "again to teach it")
        return super().teach_refusal()

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
        state = {"mean": self.mean, "inverse_covariance": self.inverse_covariance, "channel_index": self.channel_index}
        if self.fit_covariance is not None:
            state.update(fit_mean=self.fit_mean, fit_covariance=self.fit_covariance, fit_count=self.fit_count,
                         taught_embeddings=self.taught_embeddings)
        return state

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
        if "fit_covariance" in state:  # files made before teaching keep only the Gaussians in use
            fit_mean = require_tensor(state, "fit_mean", ndim=2)
            covariance = require_tensor(state, "fit_covariance", ndim=3)
            count = require_tensor(state, "fit_count", ndim=1)
            taught = require_tensor(state, "taught_embeddings", ndim=3)
            if (fit_mean.shape != mean.shape or covariance.shape != inverse.shape or count.numel() != 1
                    or taught.shape[1:] != mean.shape):
                raise ModelFileError(f"PaDiM running sums (mean {tuple(fit_mean.shape)}, covariance "
                                     f"{tuple(covariance.shape)}, taught {tuple(taught.shape)}) do not fit its "
                                     f"statistics (mean {tuple(mean.shape)})")
            self.fit_mean, self.fit_covariance = fit_mean.float(), covariance.float()
            self.fit_count, self.taught_embeddings = count.double().cpu(), taught.float()
