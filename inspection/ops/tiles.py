"""Overlapping tiles of large images and the stitching of their maps into one map (tiles mode).

Tiles start at evenly spread positions that cover each axis with at least the requested overlap. Stitching
blends the tiles' maps with a separable window that ramps linearly over the overlap, divided by the summed
weights at every pixel: where the tiles agree the result is exactly their value, so a constant map stays
constant and a ramp stays a ramp across tile borders (no seams).
"""

from __future__ import annotations

import math

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length) with at least `overlap` pixels shared."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(top, left) of every tile of a height × width image, row by row."""
    return [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]


def cut_tiles(images: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """[B, C, H, W] → [B·T, C, tile, tile]: each image's T tiles, image by image."""
    # int(): under ONNX tracing a size is a tensor; the grid is fixed per working size, as the exported graph is.
    corners = tile_grid(int(images.shape[-2]), int(images.shape[-1]), tile, overlap)
    tiles = torch.stack([images[:, :, top: top + tile, left: left + tile] for top, left in corners], dim=1)
    return tiles.reshape(-1, *tiles.shape[2:])


def blend_window(tile: int, overlap: int, device: torch.device | None = None) -> torch.Tensor:
    """[tile, tile] weights: 1 inside, falling linearly towards the tile's edges over `overlap` pixels (> 0)."""
    positions = torch.arange(tile, dtype=torch.float32, device=device) + 0.5
    ramp = torch.minimum(positions, tile - positions).div(max(overlap, 1)).clamp(max=1.0)
    return ramp[:, None] * ramp[None, :]


def stitch(tile_maps: torch.Tensor, height: int, width: int, overlap: int) -> torch.Tensor:
    """[B·T, tile, tile] maps of `cut_tiles`'s tiles → [B, height, width], blended in the overlaps."""
    tile = int(tile_maps.shape[-1])
    corners = tile_grid(height, width, tile, overlap)
    maps = tile_maps.reshape(-1, len(corners), tile, tile)
    window = blend_window(tile, overlap, tile_maps.device).to(tile_maps.dtype)
    total = tile_maps.new_zeros(maps.shape[0], height, width)
    weight = tile_maps.new_zeros(height, width)
    for index, (top, left) in enumerate(corners):  # one slice per tile (a handful), never per pixel
        total[:, top: top + tile, left: left + tile] += maps[:, index] * window
        weight[top: top + tile, left: left + tile] += window
    return total / weight
