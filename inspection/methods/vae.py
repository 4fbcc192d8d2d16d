"""A convolutional VAE of good images, scored by its residual or by iterative energy-based projection
(Dehaene, Frigo, Combrexelle and Eline, ICLR 2020).

Learns: an encoder of three stride-2 convolution blocks and a fully connected latent (mean and log-variance),
and the mirrored decoder with a sigmoid output, trained from scratch on the good images (RGB or grey, 128×128
by default) with a squared-error reconstruction term plus the KL divergence to the unit Gaussian.

Scores, by the `scoring` parameter:

- ``residual``: the plain VAE — map = |x − f(x)|, f(x) the reconstruction from the latent mean;
- ``projection`` (the paper's): starting from x₀ = x, descend the energy E(x) = L_r(x) + λ‖x − x₀‖₁ (L_r the
  VAE's own loss) for T steps, each step scaled per pixel by the current reconstruction error,
  x_{t+1} = x_t − α · ∇ₓE(x_t) ⊙ (x_t − f(x_t))², the gradient taken at x_t. Pixels the VAE rebuilds well
  stay put; defects are walked towards the normal-data manifold, and the rest of the image keeps its detail,
  which a blurry reconstruction loses. Map = |x₀ − x_T|.

Either map is averaged over the colour channels and blurred; the image score is its maximum. The projection
runs for a whole batch of images at once, with gradients with respect to the images only (the network's
weights are frozen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError
from ..model.base import AnomalyModel
from ..model.capabilities import Capabilities
from ..model.common_params import map_blur
from ..model.training import TrainingSet, freeze, load_module_state, module_state, optimizer_step, train_epochs
from ..model.views import Panel, ScoredBatch, frame_strip, rgb_uint8
from ..ops.smoothing import gaussian_blur
from ..params import setting
from ..progress import ProgressCallback

SCORINGS = ("projection", "residual")
COLORS = ("rgb", "gray")


def _check_size(values: Mapping[str, Any]) -> None:
    if values["crop"] % 8:
        raise ParameterError(f"parameter 'crop' ({values['crop']}) must be a multiple of 8 for the VAE: its three "
                             "stride-2 blocks halve the image three times")


class ConvVAE(nn.Module):
    """Three stride-2 convolution blocks → FC latent (mean, log-variance) → the mirror image, sigmoid output."""

    def __init__(self, channels: int, size: int, width: int, hidden: int, latent: int):
        super().__init__()
        self.grid = (4 * width, size // 8, size // 8)
        flat = 4 * width * (size // 8) ** 2

        def down(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 4, 2, 1), nn.BatchNorm2d(outputs), nn.LeakyReLU(0.2)]

        def up(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(inputs, outputs, 4, 2, 1), nn.BatchNorm2d(outputs), nn.LeakyReLU(0.2)]

        self.encoder = nn.Sequential(*down(channels, width), *down(width, 2 * width), *down(2 * width, 4 * width))
        self.to_latent = nn.Sequential(nn.Linear(flat, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                       nn.Linear(hidden, 2 * latent))
        self.from_latent = nn.Sequential(nn.Linear(latent, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                         nn.Linear(hidden, flat), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(*up(4 * width, 2 * width), *up(2 * width, width),
                                     nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, images: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, latent mean, latent log-variance); the latent is sampled only when `sample`."""
        mean, log_variance = self.to_latent(self.encoder(images).flatten(1)).chunk(2, dim=1)
        latent = mean + torch.randn_like(mean) * (0.5 * log_variance).exp() if sample else mean
        return self.decoder(self.from_latent(latent).view(-1, *self.grid)), mean, log_variance


def vae_loss(images: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor,
             kl_weight: float) -> torch.Tensor:
    """Per image: summed squared error + kl_weight · KL(q(z|x) ‖ N(0, I)).

    Squared error rather than the seed's binary cross-entropy: as an energy over the image, its gradient
    2(x − f(x)) pulls each pixel towards its reconstruction, where cross-entropy's would push it to 0 or 1.
    """
    squared = (images - reconstruction).pow(2).flatten(1).sum(1)
    kl = -0.5 * (1 + log_variance - mean.pow(2) - log_variance.exp()).sum(1)
    return squared + kl_weight * kl


class VAE(AnomalyModel):
    name = "vae"
    description = ("Convolutional VAE of the good images; score = what the iterative energy-based projection "
                   "changes (or the plain reconstruction residual).")
    capabilities = Capabilities(
        resize_modes_reason="its fully connected latent is trained at one input size, and tiles would need stitched "
                            "reconstructions",
        reconstructs=True, trains_by_gradient=True, variant_param="scoring", stages={"epoch": "Training the VAE"},
        export_refused="its projection optimises each image by gradient steps, not one forward pass (the residual "
                       "variant, scoring=residual, exports)")
    default_overrides = {"resize": 146, "crop": 128}
    param_rules = (_check_size,)

    scoring: str = setting("projection", "projection: the paper's iterative energy-based projection, map = |x₀ − "
                           "x_T|; residual: the plain VAE, map = |x − f(x)|.", choices=SCORINGS)
    color: str = setting("rgb", "rgb: model the three colour channels; gray: their mean (grey parts).", choices=COLORS)
    latent_dim: int = setting(512, "Dimension of the latent code.", minimum=1, maximum=8192)
    hidden_dim: int = setting(512, "Width of the fully connected layer on each side of the latent (the seed uses 1024, "
                              "which trains several times slower on a CPU).", minimum=1, maximum=8192)
    width: int = setting(32, "Channels of the first convolution block (doubled in each of the next two).",
                         minimum=1, maximum=512)
    kl_weight: float = setting(0.001, "Weight of the KL term against the squared error summed over the pixels. A large "
                               "weight (the textbook 1) blurs the reconstructions until their residual shows little; "
                               "lower it when reconstructions look blurred.", minimum=0.0, maximum=1e6)
    epochs: int = setting(30, "Passes over the good images.", minimum=1, maximum=100_000)
    learning_rate: float = setting(5e-4, "Adam's learning rate.", minimum=1e-7, maximum=1.0)
    projection_steps: int = setting(50, "T: projection steps (each costs a forward and backward pass of the VAE).",
                                    minimum=1, maximum=100_000)
    projection_alpha: float = setting(1.0, "α: projection step size (per pixel, it is further scaled by the squared "
                                      "reconstruction error). A larger step needs fewer steps T for the same "
                                      "projection: raise α to shorten scoring.", minimum=0.0, maximum=1e6)
    projection_lambda: float = setting(0.05, "λ: weight of ‖x − x₀‖₁, which keeps the projection near the input.",
                                       minimum=0.0, maximum=1e6)
    strip_frames: int = setting(6, "Frames x_t shown in the projection's strip (views only).", minimum=2, maximum=64)
    sigma: float = map_blur(4.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.network: ConvVAE | None = None

    def default_normalization(self) -> str:
        return "unit"  # the decoder's sigmoid output lives in [0, 1]

    def _build(self) -> ConvVAE:
        return ConvVAE(1 if self.color == "gray" else 3, self.crop, self.width,
                       self.hidden_dim, self.latent_dim).to(self.torch_device)

    def _channels(self, images: torch.Tensor) -> torch.Tensor:
        """Input images in [0, 1] → what the network models (their grey mean when color=gray)."""
        return images.mean(1, keepdim=True) if self.color == "gray" else images

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        images = TrainingSet.of_images(batches, self.preprocessing.normalization)
        network = self._build().train()
        optimizer = torch.optim.Adam(network.parameters(), lr=self.learning_rate)

        def step(batch: torch.Tensor, _: float) -> dict[str, float]:
            inputs = self._channels(batch)
            loss = vae_loss(inputs, *network(inputs, sample=True), self.kl_weight).mean()
            return {"loss": optimizer_step(optimizer, loss)}

        train_epochs(images, self.epochs, self.batch_size, self.seed, step, progress)
        self.network = freeze(network)

    def energy(self, images: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image E(x) = L_r(x) + λ‖x − x₀‖₁, and the reconstruction f(x) it was computed with."""
        reconstruction, mean, log_variance = self.network(images)
        loss = vae_loss(images, reconstruction, mean, log_variance, self.kl_weight)
        return loss + self.projection_lambda * (images - start).abs().flatten(1).sum(1), reconstruction

    def project(self, start: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x_T from x₀ = `start` (a batch, all at once), and the iterates x_t for t in `keep`."""
        alpha = self.projection_alpha
        current = start.detach()
        kept = [current] if 0 in keep else []
        with torch.enable_grad():
            for step in range(1, self.projection_steps + 1):
                current = current.detach().requires_grad_(True)
                energy, reconstruction = self.energy(current, start)
                # The gradient at x_t (the seed's code takes it at x₀ every step); only the images get one.
                (gradient,) = torch.autograd.grad(energy.sum(), current)
                error = (current - reconstruction).detach().pow(2)
                current = (current.detach() - alpha * gradient * error).clamp_(0, 1)
                if step in keep:
                    kept.append(current)
        return current, kept

    def export_refusal(self) -> str:
        return "" if self.scoring == "residual" else super().export_refusal()

    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored = self._score_detailed(images, panels=False)
        return scored.maps, scored.scores

    def _score_detailed(self, images: torch.Tensor, panels: bool) -> ScoredBatch:
        start = self._channels(self.unit_range(images))
        vae_reconstruction = self.network(start)[0]
        frames: list[torch.Tensor] = []
        if self.scoring == "projection":
            steps = self.projection_steps
            keep = tuple(sorted({round(step) for step in torch.linspace(0, steps, self.strip_frames)
                                 .tolist()})) if panels else ()
            compared, frames = self.project(start, keep)
        else:
            compared, keep = vae_reconstruction, ()
        maps = gaussian_blur((start - compared).abs().mean(1), self.sigma)
        scored = ScoredBatch(maps, maps.flatten(1).amax(1), reconstructions=compared)
        if panels:
            scored.panels = self._panels(start, vae_reconstruction, compared, frames, keep)
        return scored

    def _panels(self, start: torch.Tensor, vae_reconstruction: torch.Tensor, compared: torch.Tensor,
                frames: list[torch.Tensor], keep: tuple[int, ...]) -> list[list[Panel]]:
        inputs, rebuilt = rgb_uint8(start), rgb_uint8(vae_reconstruction)
        projected = rgb_uint8(compared) if frames else None
        panels = []
        for index in range(start.shape[0]):
            views = [Panel("Input (working resolution)", inputs[index]),
                     Panel("VAE reconstruction f(x)", rebuilt[index],
                           "Decoded from the latent mean: blurry, and anomalies partly rebuilt."
                           + ("" if frames else " The anomaly map is |x − f(x)|."))]
            if frames:
                views.append(Panel(f"Projected x_T (T = {self.projection_steps})", projected[index],
                                   "The input walked towards the normal images by energy descent; the anomaly "
                                   "map is |x₀ − x_T|."))
                views.append(Panel("Projection steps x_t, t = " + ", ".join(map(str, keep)),
                                   frame_strip(torch.stack([frame[index] for frame in frames])),
                                   "Left to right: the image as the projection changes it."))
            panels.append(views)
        return panels

    # Grad-CAM looks at the encoder's blocks (after each block's activation), through the residual score.
    _EXPLAINED = {"encoder.2": "encoder block 1 (stride 2)", "encoder.5": "encoder block 2 (stride 4)",
                  "encoder.8": "encoder block 3 (stride 8)"}

    def explanation_layers(self) -> dict[str, str]:
        return dict(self._EXPLAINED)

    def explanation_forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        start = self._channels(self.unit_range(images))
        captured: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(lambda _module, _inputs, output, name=f"encoder.{index}":
                                                captured.__setitem__(name, output))
                   for index, module in enumerate(self.network.encoder) if f"encoder.{index}" in self._EXPLAINED]
        try:
            reconstruction = self.network(start)[0]
        finally:
            for handle in handles:
                handle.remove()
        maps = gaussian_blur((start - reconstruction).abs().mean(1), self.sigma)
        return captured, maps, maps.flatten(1).amax(1)

    def explanation_network(self) -> nn.Module:
        return self.network

    def explanation_note(self) -> str:
        if self.scoring == "projection":
            return ("For this VAE, Grad-CAM explains the residual score — the maximum of |x − f(x)|, blurred — of the "
                    "same network; the projection's steps are not differentiated.")
        return ""

    def _state(self) -> dict[str, torch.Tensor | None]:
        return module_state("vae", self.network)

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.network = freeze(load_module_state(self._build(), state, "vae", "VAE"))
