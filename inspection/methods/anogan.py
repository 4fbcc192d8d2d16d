"""AnoGAN (Schlegl et al., IPMI 2017), with the f-AnoGAN encoder (Schlegl et al., MedIA 2019) as the fast path.

Learns: a DCGAN — generator G: z → image and discriminator D — on the good images (64×64 by default, 128 as an
option), with the seed's stabilisers: several generator steps per discriminator step, Adam (β₁ = 0.5) with
cosine annealing and warm restarts, stepped at fractional epochs. With ``scoring=encoder`` an encoder E: x → z
is trained afterwards with G and D frozen (f-AnoGAN's izi_f: ‖x − G(E(x))‖² plus the same on D's features).

Scores, by the `scoring` parameter, both on the AnoGAN loss
L(z) = (1 − λ)·Σ|x − G(z)| + λ·Σ|f_D(x) − f_D(G(z))|  (f_D: the discriminator's last feature maps):

- ``optimize`` (AnoGAN): z is optimised for each image (Adam, N steps, 500 by default as in the paper) from
  one seeded start, a whole batch at once — each image's z only sees its own loss, and Adam's updates are
  per coordinate, so the images do not influence each other;
- ``encoder`` (f-AnoGAN): z = E(x) in one pass, no optimisation.

Map = |x − G(z*)| averaged over the colour channels and blurred; image score = L(z*).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError
from ..model.base import AnomalyModel
from ..model.capabilities import Capabilities
from ..model.common_params import map_blur
from ..model.training import (
    TrainingSet,
    freeze,
    load_module_state,
    module_state,
    optimizer_step,
    train_epochs,
    warm_restarts,
)
from ..model.views import Panel, ScoredBatch, rgb_uint8
from ..ops.smoothing import gaussian_blur
from ..params import setting
from ..progress import ProgressCallback

SCORINGS = ("optimize", "encoder")


def _check_size(values: Mapping[str, Any]) -> None:
    crop = values["crop"]
    if crop < 16 or crop & (crop - 1):
        raise ParameterError(f"parameter 'crop' ({crop}) must be a power of two of at least 16 for AnoGAN: the "
                             "DCGAN doubles a 4×4 map up to the image size (64 by default, 128 as an option)")


def _levels(size: int) -> int:
    """Stride-2 layers between the 4×4 map and a size×size image."""
    return int(math.log2(size)) - 2


class Generator(nn.Module):
    """DCGAN generator: z → 4×4 × (width·2^(n−1)) → … doubling, halving channels … → tanh image."""

    def __init__(self, latent: int, width: int, size: int, channels: int = 3):
        super().__init__()
        levels = _levels(size)
        widths = [width * 2 ** (levels - 1 - index) for index in range(levels)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for inputs, outputs in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(inputs, outputs, 4, 2, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.layer_names = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layer_names(latent[:, :, None, None])


class Critic(nn.Module):
    """DCGAN discriminator's convolutions down to a 4×4 map, and a head: D's logit, or the encoder's z."""

    def __init__(self, width: int, size: int, outputs: int, channels: int = 3):
        super().__init__()
        levels = _levels(size)
        widths = [width * 2 ** index for index in range(levels)]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for inputs, outputs_ in zip(widths, widths[1:]):
            layers += [nn.Conv2d(inputs, outputs_, 4, 2, 1, bias=False), nn.BatchNorm2d(outputs_), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], outputs, 4, 1, 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).flatten(1)


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class AnoGAN(AnomalyModel):
    name = "anogan"
    description = ("DCGAN of the good images; score = how well the generator can rebuild the image (z optimised "
                   "per image, or given by an encoder).")
    capabilities = Capabilities(
        resize_modes_reason="its generator makes images of one size, and tiles would need stitched reconstructions",
        reconstructs=True, trains_by_gradient=True, variant_param="scoring",
        stages={"epoch": "Training the GAN (generator and discriminator)", "encoder": "Training the encoder x → z"},
        export_refused="its z search optimises each image, not one forward pass (the encoder variant, "
                       "scoring=encoder, exports)")
    default_overrides = {"resize": 73, "crop": 64}
    param_rules = (_check_size,)

    scoring: str = setting("optimize", "optimize: AnoGAN, z optimised per image; encoder: f-AnoGAN, z = E(x) from an "
                           "encoder trained after the GAN (no optimisation when scoring).", choices=SCORINGS)
    latent_dim: int = setting(128, "Dimension of z.", minimum=1, maximum=4096)
    width: int = setting(32, "Channels of the generator's last and the discriminator's first layer (DCGAN: 64).",
                         minimum=1, maximum=1024)
    epochs: int = setting(60, "Passes over the good images for the GAN.", minimum=1, maximum=100_000)
    learning_rate: float = setting(2e-4, "Adam's learning rate (generator and discriminator).",
                                   minimum=1e-7, maximum=1.0)
    generator_steps: int = setting(3, "Generator steps per discriminator step (keeps D from winning outright).",
                                   minimum=1, maximum=100)
    restart_epochs: int = setting(15, "Epochs of the first cosine cycle of the learning rate (warm restarts).",
                                  minimum=1, maximum=100_000)
    restart_mult: int = setting(2, "Each cosine cycle is this many times longer than the previous one.",
                                minimum=1, maximum=100)
    z_steps: int = setting(500, "N: Adam steps optimising z per image (scoring=optimize).", minimum=1, maximum=100_000)
    z_learning_rate: float = setting(0.05, "Adam's learning rate for z: large enough that z settles within z_steps "
                                     "(the seed's 0.0002 barely moves it).", minimum=1e-7, maximum=100.0)
    discrimination_weight: float = setting(0.1, "λ: weight of the discrimination (feature) loss against the "
                                           "residual.", minimum=0.0, maximum=1.0)
    encoder_epochs: int = setting(30, "Passes over the good images for the encoder (scoring=encoder).",
                                  minimum=1, maximum=100_000)
    sigma: float = map_blur(2.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.generator: Generator | None = None
        self.discriminator: Critic | None = None
        self.encoder: Critic | None = None

    @property
    def uses_encoder(self) -> bool:
        return self.scoring == "encoder"

    def _networks(self) -> tuple[Generator, Critic, Critic | None]:
        latent, width, size = self.latent_dim, self.width, self.crop
        encoder = Critic(width, size, latent).to(self.torch_device) if self.uses_encoder else None
        device = self.torch_device
        return Generator(latent, width, size).to(device), Critic(width, size, 1).to(device), encoder

    def _adam(self, module: nn.Module) -> torch.optim.Adam:
        return torch.optim.Adam(module.parameters(), lr=self.learning_rate, betas=(0.5, 0.999),
                                weight_decay=1e-5)

    def _fit_batches(self, batches: Callable[[], Iterator[torch.Tensor]], n_images: int,
                     progress: ProgressCallback) -> None:
        images = TrainingSet.of_images(batches, self.preprocessing.normalization)  # [-1, 1], as tanh gives
        generator, discriminator, encoder = self._networks()
        generator.apply(_dcgan_init)
        discriminator.apply(_dcgan_init)
        generator.train()
        discriminator.train()
        optimizers = self._adam(generator), self._adam(discriminator)
        schedulers = [warm_restarts(optimizer, self.restart_epochs, self.restart_mult)
                      for optimizer in optimizers]
        latent = self.latent_dim

        def gan_step(real: torch.Tensor, epoch: float) -> dict[str, float]:
            noise = torch.randn(real.shape[0], latent, device=real.device)
            real_logits, fake_logits = discriminator(real), discriminator(generator(noise).detach())
            discriminator_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
            losses = {"discriminator": optimizer_step(optimizers[1], discriminator_loss)}
            for _ in range(self.generator_steps):
                fooled = discriminator(generator(noise))
                losses["generator"] = optimizer_step(
                    optimizers[0], F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled)))
            for scheduler in schedulers:
                scheduler.step(epoch)
            return {"generator": losses["generator"], "discriminator": losses["discriminator"]}

        train_epochs(images, self.epochs, self.batch_size, self.seed, gan_step,
                     progress)
        self.generator, self.discriminator = freeze(generator), freeze(discriminator)
        if encoder is not None:
            self.encoder = self._fit_encoder(encoder, images, progress)

    def _fit_encoder(self, encoder: Critic, images: TrainingSet, progress: ProgressCallback) -> Critic:
        """f-AnoGAN's izi_f: E learns x → z such that G(E(x)) rebuilds x, in pixels and in D's features."""
        encoder.apply(_dcgan_init)
        encoder.train()
        optimizer = self._adam(encoder)

        def encoder_step(real: torch.Tensor, _: float) -> dict[str, float]:
            rebuilt = self.generator(encoder(real))
            features = self.discriminator.features
            loss = F.mse_loss(rebuilt, real) + F.mse_loss(features(rebuilt), features(real))
            return {"loss": optimizer_step(optimizer, loss)}

        # Seeded apart from the GAN's passes, so that the two trainings do not share a shuffling order.
        train_epochs(images, self.encoder_epochs, self.batch_size, self.seed + 1,
                     encoder_step, progress, stage="encoder")
        return freeze(encoder)

    def anomaly_loss(self, images: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image (1 − λ)·Σ|x − G(z)| + λ·Σ|f_D(x) − f_D(G(z))|, and G(z)."""
        generated = self.generator(latent)
        features = self.discriminator.features
        weight = self.discrimination_weight
        residual = (images - generated).abs().flatten(1).sum(1)
        discrimination = (features(images) - features(generated)).abs().flatten(1).sum(1)
        return (1 - weight) * residual + weight * discrimination, generated

    def start_latent(self, batch: int) -> torch.Tensor:
        """z₀: one seeded draw from N(0, I), the same for every image (so a score never depends on the batch)."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.latent_dim, generator=generator).to(self.torch_device).expand(batch, -1)

    def optimize_latent(self, images: torch.Tensor, steps: int | None = None) -> tuple[torch.Tensor, list[float]]:
        """z* for a batch of images (Adam on the AnoGAN loss, all images at once) and the batch's mean loss per step."""
        latent = self.start_latent(images.shape[0]).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=self.z_learning_rate)
        history = []
        with torch.enable_grad():
            for _ in range(self.z_steps if steps is None else steps):
                loss = self.anomaly_loss(images, latent)[0]
                history.append(float(loss.detach().mean()))
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()  # a sum: each image's z gets exactly its own loss's gradient
                optimizer.step()
        return latent.detach(), history

    def export_refusal(self) -> str:
        return "" if self.uses_encoder else super().export_refusal()

    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scored = self._score_detailed(images, panels=False)
        return scored.maps, scored.scores

    def _score_detailed(self, images: torch.Tensor, panels: bool) -> ScoredBatch:
        latent = self.encoder(images) if self.uses_encoder else self.optimize_latent(images)[0]
        loss, generated = self.anomaly_loss(images, latent)
        unit_input, unit_generated = self.unit_range(images), (generated + 1) / 2  # tanh output → [0, 1]
        residual = (unit_input - unit_generated).abs().mean(1)
        maps = gaussian_blur(residual, self.sigma)
        scored = ScoredBatch(maps, loss, reconstructions=unit_generated)
        if panels:
            how = ("z = E(x), from the encoder" if self.uses_encoder else
                   f"z optimised for this image ({self.z_steps} Adam steps)")
            inputs, rebuilt = rgb_uint8(unit_input), rgb_uint8(unit_generated)
            scored.panels = [[Panel("Input (working resolution)", inputs[index]),
                              Panel("Generated G(z*)", rebuilt[index],
                                    f"The closest image the generator makes: {how}."),
                              Panel("Residual |x − G(z*)|", residual[index].cpu().numpy(),
                                    "Before blurring; the anomaly map is this, blurred.")]
                             for index in range(images.shape[0])]
        return scored

    def _state(self) -> dict[str, torch.Tensor | None]:
        state = {**module_state("generator", self.generator), **module_state("discriminator", self.discriminator)}
        if self.uses_encoder:
            state.update(module_state("encoder", self.encoder))
        return state

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        generator, discriminator, encoder = self._networks()
        self.generator = freeze(load_module_state(generator, state, "generator", "AnoGAN"))
        self.discriminator = freeze(load_module_state(discriminator, state, "discriminator", "AnoGAN"))
        if encoder is not None:
            self.encoder = freeze(load_module_state(encoder, state, "encoder", "AnoGAN"))
