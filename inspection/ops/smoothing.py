"""Gaussian smoothing of anomaly maps (separable, on the maps' device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # truncate at 4 sigma, as scipy and the PatchCore code do
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Blur [B, H, W] maps with a Gaussian of standard deviation `sigma` pixels (reflect padding)."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, maps.device).to(maps.dtype)
    radius = kernel.numel() // 2
    batch = maps[:, None]
    # Reflect padding needs pad < size; very small maps fall back to replicate padding.
    mode = "reflect" if radius < min(maps.shape[-2:]) else "replicate"
    batch = F.conv2d(F.pad(batch, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    batch = F.conv2d(F.pad(batch, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return batch[:, 0]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B, h, w] maps to `size`."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

