"""Training by gradient descent, written once for the methods that learn weights (DFR, the VAE, AnoGAN).

- `TrainingSet`: training samples kept on the device in a compact type and served in seeded shuffled batches —
  the fitting images decoded and preprocessed once and kept as uint8 (exact: they were uint8 before
  normalising, and 4× smaller than float; no image is decoded again in later epochs), or any other tensor
  (DFR's sampled feature vectors).
- `train_epochs`: the epoch loop; the method gives one training step, the loop reports each epoch's mean
  losses as `Progress` (the CLI's bar and the app's loss curve read them).
- `optimizer_step`, `warm_restarts` (cosine annealing with warm restarts, stepped per batch at fractional
  epochs), `freeze`, and saving/loading a network's tensors in a model file (`module_state`,
  `load_module_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from ..data.preprocess import normalization_tensors
from ..errors import ModelFileError
from ..progress import Progress, ProgressCallback

#: One training step: (batch, position in epochs as a float, e.g. 3.25) → its named losses (the first is the main).
TrainingStep = Callable[[torch.Tensor, float], Mapping[str, float]]


class TrainingSet:
    """Training samples kept on the device in a compact type, served in seeded shuffled batches.

    `stored` holds the samples along its first axis; `convert` turns a batch of them into what the network takes.
    """

    def __init__(self, stored: torch.Tensor, convert: Callable[[torch.Tensor], torch.Tensor]):
        if stored.shape[0] == 0:
            raise ValueError("no samples to train on")
        self.stored = stored
        self.convert = convert

    @classmethod
    def of_images(cls, batches: Callable[[], Iterator[torch.Tensor]], normalization: str) -> TrainingSet:
        """The fitting images (one pass of `batches`) kept as uint8, served normalised like the model's input."""
        stored = []
        for batch in batches():
            mean_t, std_t = normalization_tensors(normalization, batch.device)
            # The preprocessing made uint8 images before normalising: rounding back is exact.
            stored.append((batch * std_t + mean_t).mul(255).round().clamp(0, 255).to(torch.uint8))
        if not stored:
            raise ValueError("no images to train on")
        images = torch.cat(stored)
        mean_t, std_t = normalization_tensors(normalization, images.device)
        return cls(images, lambda chosen: (chosen.float().div_(255) - mean_t) / std_t)

    def __len__(self) -> int:
        return self.stored.shape[0]

    def n_batches(self, batch_size: int) -> int:
        """How many batches `shuffled` yields per pass."""
        full, rest = divmod(len(self), batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)

    def shuffled(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """One pass in a seeded random order, converted for the network.

        A last batch of a single sample is left out (that sample comes in other passes): BatchNorm cannot train on
        one sample.
        """
        order = torch.randperm(len(self), generator=generator).to(self.stored.device)
        for start in range(0, len(order), batch_size):
            index = order[start: start + batch_size]
            if index.numel() == 1 and len(order) > 1:
                continue
            yield self.convert(self.stored[index])


def train_epochs(samples: TrainingSet, epochs: int, batch_size: int, seed: int, step: TrainingStep,
                 progress: ProgressCallback, stage: str = "epoch") -> list[dict[str, float]]:
    """Run `epochs` seeded passes of `step` over `samples`; report and return each epoch's mean named losses."""
    generator = torch.Generator().manual_seed(seed)
    n_batches = samples.n_batches(batch_size)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        seen = 0
        for index, batch in enumerate(samples.shuffled(batch_size, generator)):
            losses = step(batch, epoch + index / n_batches)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value) * batch.shape[0]
            seen += batch.shape[0]
        means = {name: total / max(seen, 1) for name, total in sums.items()}
        main = next(iter(means.values()), None)
        if main is not None and not math.isfinite(main):
            raise FloatingPointError(f"the training loss became {main} in epoch {epoch + 1}: lower the learning rate")
        progress(Progress(stage, epoch + 1, epochs, loss=main, losses=means if len(means) > 1 else None))
        history.append(means)
    return history


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One gradient step on `loss`; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def warm_restarts(optimizer: torch.optim.Optimizer, first_cycle: float,
                  cycle_mult: int) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """Cosine annealing with warm restarts, cycles measured in epochs; step it with the fractional epoch a
    `TrainingStep` receives (epoch + batch / batches — not epoch + batch · batches)."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, round(first_cycle)),
                                                                T_mult=cycle_mult)


def freeze(module: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients for the weights (the last training step's are dropped): scoring may
    differentiate with respect to the input, never the weights."""
    for parameter in module.parameters():
        parameter.grad = None
    return module.eval().requires_grad_(False)


def module_state(prefix: str, module: nn.Module | None) -> dict[str, torch.Tensor | None]:
    """A network's tensors for a model file, named `prefix.…` ({prefix: None} before it exists)."""
    if module is None:
        return {prefix: None}
    return {f"{prefix}.{name}": tensor for name, tensor in module.state_dict().items()}


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, method: str) -> nn.Module:
    """Load the `prefix.…` tensors of a model file into `module`; ModelFileError when they do not fit it."""
    own = {name[len(prefix) + 1:]: tensor for name, tensor in state.items() if name.startswith(prefix + ".")}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()
        raise ModelFileError(f"{method} model file: its {prefix} does not fit the saved settings "
                             f"({reason[1].strip() if len(reason) > 1 else reason[0]})") from None
    return module
