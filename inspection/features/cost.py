"""What a backbone costs: parameters, mult-adds (counted exactly) and measured milliseconds per image.

Mult-adds are counted the way the MobileNet paper counts them: every multiply-accumulate of the
convolutions and fully connected layers, from the shapes seen in one forward pass (forward hooks);
BatchNorm, activations and pooling are not counted. The speed is the median wall time of one image at
batch size 1 on this machine, after a warm-up. Weights do not change either number, so the networks are
built untrained.

    python -m inspection.features.cost --out costs.json    # the table the app shows beside the choices
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import get_backbone_spec
from .mobilenet import RESOLUTIONS


@dataclass(frozen=True)
class BackboneCost:
    """One backbone at one input side: parameters, mult-adds and (when measured) ms per image."""

    backbone: str
    resolution: int
    parameters: int
    mult_adds: int
    ms_per_image: float | None = None
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _layer_mult_adds(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-accumulates of one forward call of a convolution or linear layer, per image."""
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def count_cost(model: nn.Module, resolution: int) -> tuple[int, int]:
    """(parameters, mult-adds per image) of `model` on a resolution×resolution RGB image."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_mult_adds(module, inputs, output)

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for handle in handles:
            handle.remove()
    return sum(parameter.numel() for parameter in model.parameters()), total


def time_call(call: Callable[[], Any], repeats: int = 10, warmup: int = 2, device: str = "cpu") -> float:
    """Median milliseconds of `call()` without gradients (after `warmup` calls; the GPU synchronised around each)."""
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            if device != "cpu":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            call()
            if device != "cpu":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def time_forward(model: nn.Module, resolution: int, repeats: int = 10, warmup: int = 2,
                 device: str = "cpu") -> float:
    """Median milliseconds of one forward pass at batch size 1 (after `warmup` passes)."""
    model = model.eval().to(device)
    image = torch.randn(1, 3, resolution, resolution, device=device)
    return time_call(lambda: model(image), repeats, warmup, device)


def backbone_cost(name: str, resolution: int = 224, measure: bool = True, repeats: int = 10,
                  device: str = "cpu") -> BackboneCost:
    """Parameters and mult-adds of backbone `name` (classifier head included) at an input side; ms when measured."""
    model = get_backbone_spec(name).build()
    parameters, mult_adds = count_cost(model, resolution)
    milliseconds = round(time_forward(model, resolution, repeats, device=device), 2) if measure else None
    return BackboneCost(name, resolution, parameters, mult_adds, milliseconds, device if measure else "")


#: The lightweight choices and input sides the cost table covers by default.
MOBILENET_V1_NAMES = ("mobilenet_v1", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025")
PRETRAINED_LIGHTWEIGHT = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2")


def default_choices() -> list[tuple[str, int]]:
    """Every MobileNet V1 width at every paper resolution, and the pretrained lightweight backbones at 224."""
    return [(name, side) for name in MOBILENET_V1_NAMES for side in RESOLUTIONS] + \
        [(name, 224) for name in PRETRAINED_LIGHTWEIGHT]


def cost_table(choices: Iterable[tuple[str, int]] | None = None, measure: bool = True,
               repeats: int = 10) -> list[BackboneCost]:
    """The cost of each (backbone, input side) choice: `default_choices()` when none are given."""
    return [backbone_cost(name, side, measure, repeats) for name, side in (choices or default_choices())]


def main(argv: Sequence[str] | None = None) -> None:
    """Write the cost table as JSON (and print it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per choice")
    parser.add_argument("--no-timing", action="store_true", help="count only (no forward passes timed)")
    arguments = parser.parse_args(argv)
    rows = [cost.to_dict() for cost in cost_table(measure=not arguments.no_timing, repeats=arguments.repeats)]
    # Timings taken on a busy machine say so: the threads used and the load around the measurement.
    report = {"conditions": {"torch_threads": torch.get_num_threads(), "load_average_1min": os.getloadavg()[0],
                             "date": time.strftime("%Y-%m-%d")}, "costs": rows}
    for row in rows:
        timing = f"{row['ms_per_image']:8.1f} ms" if row["ms_per_image"] is not None else ""
        print(f"{row['backbone']:20s} {row['resolution']:4d}  {row['parameters'] / 1e6:5.2f} M params  "
              f"{row['mult_adds'] / 1e6:7.1f} M mult-adds {timing}")
    if arguments.out:
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
