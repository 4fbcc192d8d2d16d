"""DFR (Shi, Yang and Qi, Neurocomputing 2021): deep feature reconstruction.

Learns: several backbone layers, each resized to the image size and averaged over pool×pool cells (the seed's
4×4 mean filter; done exactly by two small matrix products, never materialising the full-size maps), are
concatenated per position into multi-regional features of C channels. A convolutional autoencoder of 1×1
convolutions (C → (C+2k)/2 → 2k → k and back, BatchNorm + ReLU between) learns to rebuild the good images'
features; its bottleneck k is the number of principal components keeping 90 % of the features' variance,
found from a streamed C×C covariance (bounded memory: the seed's author ran out of RAM at this step).

Scores: the per-position mean squared feature-reconstruction error, upsampled to the image and blurred; the
image score is the map's maximum. There is no pixel reconstruction; the views show the error of each layer's
channels separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..model.backbone_model import BackboneModel
from ..model.common_params import map_blur
from ..model.training import TrainingSet, freeze, load_module_state, module_state, optimizer_step, train_epochs
from ..model.views import ScoredBatch, map_panels
from ..ops.smoothing import gaussian_blur, upsample
from ..params import setting
from ..progress import Progress, ProgressCallback


def resize_pool_matrix(in_size: int, out_size: int, pool: int, device: torch.device,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[out_size // pool, in_size]: linear resizing (align_corners) to out_size, then the mean of every pool cells."""
    impulses = torch.eye(in_size, device=device, dtype=dtype)[None]  # each input position as its own channel
    resized = F.interpolate(impulses, size=out_size, mode="linear", align_corners=True)
    return F.avg_pool1d(resized, pool, pool)[0].T


def feature_autoencoder(channels: int, latent: int) -> nn.Module:
    """The seed's autoencoder of 1×1 convolutions, C → (C+2k)/2 → 2k → k → 2k → (C+2k)/2 → C, on rows [n, C].

    A 1×1 convolution is the same linear map at every position, so it runs here as a linear layer over feature
    vectors (positions as rows): the same model, faster to train on a CPU than convolutions of 1×1 maps.
    """
    middle = (channels + 2 * latent) // 2

    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs), nn.ReLU()]

    return nn.Sequential(
        nn.Sequential(*block(channels, middle), *block(middle, 2 * latent), nn.Linear(2 * latent, latent)),
        nn.Sequential(*block(latent, 2 * latent), *block(2 * latent, middle), nn.Linear(middle, channels)))


def components_for_variance(covariance: torch.Tensor, share: float) -> int:
    """The fewest principal components whose variance adds up to `share` of the total."""
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0).clamp_min(0)
    explained = eigenvalues.cumsum(0) / eigenvalues.sum().clamp_min(1e-30)
    return int((explained < share).sum().item()) + 1


class DFR(BackboneModel):
    name = "dfr"
    description = ("Deep feature reconstruction: a 1×1-convolution autoencoder rebuilds multi-layer pretrained "
                   "features of good images; score = feature reconstruction error.")
    # Strides every backbone has (ResNets have no stride-2 layer); adding EfficientNet-Lite0's stride-2 block
    # made no measurable difference on bottle.
    feature_strides = (4, 8, 16)
    capabilities = BackboneModel.capabilities.extended(
        export_refused="",
        trains_by_gradient=True,
        no_reconstruction_reason="DFR reconstructs backbone features, not pixels: its views show the feature "
                                 "reconstruction error of each layer",
        stages={"pca": "Choosing the bottleneck size (PCA of the features)",
                "epoch": "Training the feature autoencoder"})

    pool: int = setting(4, "Each layer is resized to the image size, then averaged over pool×pool cells (the seed's "
                        "4×4 mean filter): the features' grid has this stride.", minimum=1, maximum=32)
    latent_dim: int = setting(0, "k, the autoencoder's bottleneck channels; 0: the fewest principal components that "
                              "keep `variance` of the features' variance.", minimum=0, maximum=4096)
    variance: float = setting(0.9, "Share of the features' variance kept by the PCA-chosen bottleneck.",
                              minimum=0.01, maximum=0.999999)
    epochs: int = setting(20, "Passes over the good images' feature vectors; more fit the good features more "
                          "closely, at a proportional cost in fit time (bench/longer/).", minimum=1, maximum=100_000)
    batch_positions: int = setting(4096, "Feature vectors (image positions) per training step.",
                                   minimum=2, maximum=1 << 22)
    feature_memory_mib: int = setting(512, "Memory for the good feature vectors the autoencoder trains on; beyond "
                                      "it, a seeded random share of each image's positions is kept. Lower it when "
                                      "fitting runs out of memory.",
                                      minimum=1, maximum=1 << 20)
    learning_rate: float = setting(1e-3, "Adam's learning rate.", minimum=1e-6, maximum=1.0)
    sigma: float = map_blur(4.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.autoencoder: nn.Module | None = None

    def embed(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Multi-regional features [B, C, H/pool, W/pool] from the chosen layers' feature maps: every layer on one
        grid (the working resolution, pooled), concatenated."""
        height, width = self.preprocessing.size
        pool = self.pool
        grids = []
        for feature in maps:
            rows = resize_pool_matrix(feature.shape[-2], height, pool, feature.device, feature.dtype)
            columns = resize_pool_matrix(feature.shape[-1], width, pool, feature.device, feature.dtype)
            grids.append(rows @ feature @ columns.T)
        return torch.cat(grids, dim=1)

    def _collect_features(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                          progress: ProgressCallback) -> torch.Tensor:
        """Every good position's feature vector [P, C] (float16), in one pass over the images.

        Beyond `feature_memory_mib`, a seeded random share of each image's positions is kept: neighbouring
        positions are near copies of each other (each averages a pool×pool cell of overlapping receptive fields).
        """
        channels = sum(self.layer_channels())
        budget = self.feature_memory_mib * 2**20 // (2 * channels)  # positions of float16 vectors
        generator = torch.Generator().manual_seed(self.seed)
        kept, seen = [], 0
        for images in batches():
            rows = self.embed(self.features(images)).flatten(2).transpose(1, 2)  # [B, h·w, C]
            per_image = max(1, min(rows.shape[1], budget // n_images))
            if per_image < rows.shape[1]:
                chosen = torch.rand(rows.shape[:2], generator=generator).argsort(dim=1)[:, :per_image]
                rows = rows.gather(1, chosen.to(rows.device)[:, :, None].expand(-1, -1, channels))
            kept.append(rows.reshape(-1, channels).half())
            seen += images.shape[0]
            progress(Progress("features", seen, n_images))
        return torch.cat(kept)

    def _choose_latent(self, rows: torch.Tensor, progress: ProgressCallback) -> int:
        """k from the covariance of the good feature vectors, accumulated in chunks (O(C²) memory)."""
        if self.latent_dim:
            return self.latent_dim
        channels = rows.shape[1]
        # Products of float32 chunks summed in float64, around a first estimate of the mean (so that the
        # subtraction below does not cancel): exact enough for eigenvalues, and much faster than float64 throughout.
        shift = rows[:65536].float().mean(0)
        sums = torch.zeros(channels, dtype=torch.float64, device=rows.device)
        outer = torch.zeros(channels, channels, dtype=torch.float64, device=rows.device)
        for start in range(0, rows.shape[0], 65536):
            chunk = rows[start: start + 65536].float() - shift
            sums += chunk.sum(0).double()
            outer += (chunk.T @ chunk).double()
        mean = sums / rows.shape[0]
        latent = components_for_variance(outer / rows.shape[0] - torch.outer(mean, mean), self.variance)
        progress(Progress("pca", 1, 1))
        return latent

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        rows = self._collect_features(batches, n_images, progress)
        latent = self._choose_latent(rows, progress)
        self.info["latent_dim"] = latent
        autoencoder = feature_autoencoder(rows.shape[1], latent).to(self.torch_device).train()
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=self.learning_rate)
        # The autoencoder's 1×1 convolutions see each position on its own: positions from all images, shuffled,
        # are its samples, which gives many more steps per pass than whole images would.
        positions = TrainingSet(rows, lambda chosen: chosen.float())

        def step(features: torch.Tensor, _: float) -> dict[str, float]:
            return {"loss": optimizer_step(optimizer, F.mse_loss(autoencoder(features), features))}

        train_epochs(positions, self.epochs, self.batch_positions, self.seed, step,
                     progress)
        self.autoencoder = freeze(autoencoder)

    def _squared_errors(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Squared feature-reconstruction errors [B, C, h, w] from the chosen layers' feature maps."""
        features = self.embed(maps)
        batch, channels, height, width = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, channels)
        errors = (self.autoencoder(rows) - rows).pow_(2)
        return errors.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def _finish(self, grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Maps on the feature grid [B, h, w] → the working size, blurred."""
        return gaussian_blur(upsample(grid_maps, size), self.sigma)

    def score_features(self, features: list[torch.Tensor], size: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self._finish(self._squared_errors(features).mean(1), size)
        return maps, maps.flatten(1).amax(1)

    def _score_detailed(self, images: torch.Tensor, panels: bool) -> ScoredBatch:
        if not panels:
            return ScoredBatch(*self._score(images))
        errors = self._squared_errors(self.features(images))
        size = (int(images.shape[-2]), int(images.shape[-1]))
        maps = self._finish(errors.mean(1), size)
        # One map per layer: the mean squared error of that layer's channels (the score map averages them all,
        # weighted by their channel counts).
        groups = torch.split(errors, self.layer_channels(), dim=1)
        per_layer = torch.stack([self._finish(group.mean(1), size) for group in groups], dim=1)
        titles = [f"Feature error, {layer} (stride {stride})" for layer, stride in zip(self.layer_names,
                                                                                          self.layer_strides())]
        note = ("DFR rebuilds backbone features, not the image: there is no pixel reconstruction. Each map is the "
                "squared reconstruction error of one layer's features, all on one colour scale.")
        return ScoredBatch(maps, maps.flatten(1).amax(1), panels=map_panels(per_layer, titles, note))

    def _state(self) -> dict[str, torch.Tensor | None]:
        if self.autoencoder is None:
            return {"autoencoder": None}
        latent = self.autoencoder[0][-1].out_features
        return {**module_state("autoencoder", self.autoencoder), "latent_dim": torch.tensor([latent])}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "latent_dim" not in state:
            raise ModelFileError("DFR model file lacks tensor 'latent_dim'")
        autoencoder = feature_autoencoder(sum(self.layer_channels()), int(state["latent_dim"][0]))
        self.autoencoder = freeze(load_module_state(autoencoder, state, "autoencoder", "DFR").to(self.torch_device))
