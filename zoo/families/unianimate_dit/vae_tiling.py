"""The original's tiled VAE decode (``WanVideoVAE.tiled_decode``): overlapping tiles of latents, each
decoded unclamped and blended with linear ramps on the edges that are not the image's."""

from __future__ import annotations

from typing import Any

import torch

TILE, TILE_STRIDE = (30, 52), (15, 26)  # the original's tiled decode, in latents


def _tile_mask(length: int, start_border: bool, end_border: bool, ramp: int) -> torch.Tensor:
    """The original's ``build_1d_mask``: 1, with ramps ``(1..ramp)/ramp`` written over the first and
    (last, so it wins where they meet) the final ``ramp`` entries of an edge that is not the image's.
    A tile is never shorter than its ramp (``tiled_decode``'s origins guarantee it)."""
    mask = torch.ones(length)
    steps = torch.arange(1, ramp + 1, dtype=torch.float32) / ramp
    if not start_border:
        mask[:ramp] = steps
    if not end_border:
        mask[-ramp:] = steps.flip(0)
    return mask


def tiled_decode(
    decode: Any, z: torch.Tensor, scale: int, tile: tuple[int, int] = TILE, stride: tuple[int, int] = TILE_STRIDE
) -> torch.Tensor:
    """The original's tiled decode (``WanVideoVAE.tiled_decode``): tiles of ``tile`` latents every
    ``stride`` (the original's 30x52 every 15x26 by default), each decoded unclamped and blended with
    linear ramps on the edges that are not the image's, then clamped."""
    _, _, _, height, width = z.shape
    (th, tw), (sh, sw) = tile, stride
    rows = [h for h in range(0, height, sh) if not (h - sh >= 0 and h - sh + th >= height)]
    cols = [w for w in range(0, width, sw) if not (w - sw >= 0 and w - sw + tw >= width)]
    values = weight = None
    for h in rows:
        for w in cols:
            tile = decode(z[:, :, :, h : h + th, w : w + tw])
            hh, ww = tile.shape[3], tile.shape[4]
            mask = torch.minimum(
                _tile_mask(hh, h == 0, h + th >= height, (th - sh) * scale)[:, None],
                _tile_mask(ww, w == 0, w + tw >= width, (tw - sw) * scale)[None, :],
            )
            if values is None:
                values = tile.new_zeros(*tile.shape[:3], height * scale, width * scale)
                weight = values.new_zeros(1, 1, 1, height * scale, width * scale)
            values[:, :, :, h * scale : h * scale + hh, w * scale : w * scale + ww] += tile * mask
            weight[:, :, :, h * scale : h * scale + hh, w * scale : w * scale + ww] += mask
    return (values / weight).clamp(-1.0, 1.0)
