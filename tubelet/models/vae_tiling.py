"""Spatially tiled VAE decoding: peak memory bounded by the tile, not by the resolution.

`decode_tiled(vae, z, tile=32, overlap=8)` cuts the latents (B, C, F', h, w) into tiles of
`tile` x `tile` latent pixels that overlap by `overlap`, decodes each tile through the whole clip
(the VAE's own causal temporal chunking inside, so memory is flat in the clip length too), and
blends the decoded tiles with linear ramps across the overlaps. The output is allocated once;
besides it, the peak is one tile's activations.

It is exact where a decoded pixel depends only on latents within the overlap margin of its tile.
Convolutions see a bounded neighbourhood, so an overlap wider than the decoder's receptive field
(in latent pixels) makes the convolutional path exact; per-frame attention in the decoder (Wan2.1's
middle block) sees the whole frame, which a tile cannot, so tiled and untiled differ there a little.
`tests/test_vae.py` measures the difference and checks for seams on a smooth gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tubelet.errors import ConfigError


@dataclass(frozen=True)
class VAETiling:
    """Tile size and overlap in latent pixels (a latent pixel is `spatial_factor` pixels)."""

    tile: int = 32
    overlap: int = 8

    def __post_init__(self) -> None:
        for name in ("tile", "overlap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"VAE tiling {name} must be an integer, got {v!r}")
        if self.tile < 4:
            raise ConfigError(f"VAE tiling tile must be >= 4 latent pixels, got {self.tile}")
        if not 0 <= self.overlap <= self.tile // 2:
            raise ConfigError(
                f"VAE tiling overlap must be in [0, tile / 2] = [0, {self.tile // 2}], got {self.overlap}"
            )


def _starts(size: int, tile: int, step: int) -> list[int]:
    """Tile starts along one axis covering [0, size) with tiles of `tile` (the last one flush)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return sorted(set(starts))


def _ramp(n: int, lo_overlap: int, hi_overlap: int, device: torch.device) -> Tensor:
    """Blend weights (n,) of a tile along one axis. In an overlap of k pixels with a neighbour, the
    weight is 1 over its inner quarter, falls linearly over the middle half and is 0 over the quarter
    at the tile's edge, where zero padding makes the tile's own pixels least exact; the neighbour's
    weights mirror these, so the two sum to 1 everywhere."""
    w = torch.ones(n, device=device)

    def fall(k: int) -> Tensor:  # weights over k pixels, from the inner side to the edge
        q = k // 4
        mid = k - 2 * q
        ramp = (torch.arange(mid, 0, -1, device=device, dtype=torch.float32) - 0.5) / mid
        return torch.cat([torch.ones(q, device=device), ramp, torch.zeros(q, device=device)])

    if hi_overlap:
        w[n - hi_overlap :] = fall(hi_overlap)
    if lo_overlap:
        w[:lo_overlap] = torch.minimum(w[:lo_overlap], fall(lo_overlap).flip(0))
    return w


def decode_tiled(vae: Any, z: Tensor, tiling: VAETiling | None = None) -> Tensor:
    """`vae.decode(z)` (raw latents (B, C, F', h, w) -> video (B, 3, T, H, W)) tile by tile."""
    t = tiling or VAETiling()
    _, _, _, h, w = z.shape
    if h <= t.tile and w <= t.tile:
        return vae.decode(z)
    s = int(vae.spatial_factor)
    step = t.tile - t.overlap
    ys, xs = _starts(h, t.tile, step), _starts(w, t.tile, step)
    out: Tensor | None = None
    weight: Tensor | None = None
    for yi, y0 in enumerate(ys):
        th = min(t.tile, h - y0)
        for xi, x0 in enumerate(xs):
            tw = min(t.tile, w - x0)
            piece = vae.decode(z[:, :, :, y0 : y0 + th, x0 : x0 + tw])  # (B, 3, T, th*s, tw*s)
            if out is None:
                b, c, frames = piece.shape[:3]
                out = torch.zeros(b, c, frames, h * s, w * s, dtype=piece.dtype, device=piece.device)
                weight = torch.zeros(h * s, w * s, dtype=piece.dtype, device=piece.device)
            assert weight is not None
            # overlaps with the neighbours actually there (tiles overlap by start differences)
            up = (ys[yi - 1] + t.tile - y0) * s if yi > 0 else 0
            down = (y0 + th - ys[yi + 1]) * s if yi + 1 < len(ys) else 0
            left = (xs[xi - 1] + t.tile - x0) * s if xi > 0 else 0
            right = (x0 + tw - xs[xi + 1]) * s if xi + 1 < len(xs) else 0
            wy = _ramp(th * s, max(0, up), max(0, down), piece.device)
            wx = _ramp(tw * s, max(0, left), max(0, right), piece.device)
            wgt = (wy[:, None] * wx[None, :]).to(piece.dtype)
            ys_, xs_ = slice(y0 * s, (y0 + th) * s), slice(x0 * s, (x0 + tw) * s)
            out[:, :, :, ys_, xs_] += piece * wgt
            weight[ys_, xs_] += wgt
            del piece
    assert out is not None and weight is not None
    return out / weight
