"""Feature groups (DRIFTING.md sec. 2): encoder maps -> batches of kernel problems [L, N, C].

From each map [B, C, H, W] at depth d the paper takes (a) per-location vectors, (b) the global mean and (c) std
over locations, and (d) mean/std over p x p patches [ablation FID (a,b) 9.58, (a-c) 9.10, (a-d) 8.46]. Every
vector kind becomes one group whose L problems are solved independently by the drift loss (which shares S and
lambda over a group). Pure and differentiable: the drift loss backpropagates through the generated features.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def location_stride(height: int, width: int, max_locations: int | None) -> int:
    """Smallest grid stride s with ceil(H/s) * ceil(W/s) <= max_locations (1 when uncapped)."""
    if max_locations is None:
        return 1
    if max_locations < 1:
        raise ValueError(f"max_locations must be >= 1 or None; got {max_locations}")
    s = 1
    while -(-height // s) * -(-width // s) > max_locations:
        s += 1
    return s


def _problems(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [h*w, B, C]: one kernel problem per spatial position."""
    return x.flatten(2).permute(2, 0, 1)


def input_groups(x: torch.Tensor, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """The official code's two groups on the raw image [B, 3, H, W] (DRIFTING.md sec. 6): `global`, the whole
    image as one vector [1, B, 3HW], and `norm_x`, each channel's RMS over the image [1, B, 3]. They see colour
    and exact pixel layout, which an encoder's maps may discard."""
    return {"global": x.flatten(1)[None], "norm_x": (x.square().mean((2, 3)) + eps).sqrt()[None]}


def feature_groups(maps: Sequence[torch.Tensor], *, patch_sizes: Sequence[int] = (2, 4),
                   max_locations: int | None = None, eps: float = 1e-6,
                   with_input: bool = False) -> dict[str, torch.Tensor]:
    """Encoder maps (one [B, C, H, W] per depth d) -> {group name: [L, B, C]}.

    with_input: maps[0] is the raw image and gives input_groups only (the `official` feature set); the encoder
    maps after it are numbered from d0 as usual.

    Keys per depth: `d{d}.loc` (L = H*W), `d{d}.mean`, `d{d}.std` (L = 1), and `d{d}.p{p}.mean|std` for every p
    dividing H and W that leaves more than one patch (L = H*W / p^2). `max_locations` caps the per-location
    group by keeping every s-th row and column (`location_stride`); the grid is fixed, so cached real maps and
    generated maps give the same locations. The statistics always use every location.
    """
    groups: dict[str, torch.Tensor] = input_groups(maps[0], eps) if with_input else {}
    for d, x in enumerate(maps[1:] if with_input else maps):
        if x.dim() != 4:
            raise ValueError(f"map {d} must be [B, C, H, W]; got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        s = location_stride(H, W, max_locations)
        groups[f"d{d}.loc"] = _problems(x[:, :, ::s, ::s])  # [H*W / s^2, B, C]
        mean = x.mean((2, 3), keepdim=True)  # [B, C, 1, 1]
        x_c = x - mean
        sq = x_c.square()  # [B, C, H, W]
        # eps inside the sqrt: constant regions (var = 0) would otherwise give an infinite gradient.
        groups[f"d{d}.mean"] = mean.flatten(2).permute(2, 0, 1)  # [1, B, C]
        groups[f"d{d}.std"] = (sq.mean((2, 3)) + eps).sqrt()[None]
        for p in patch_sizes:
            if H % p or W % p or (H // p) * (W // p) < 2:
                continue
            # Patch variance as E[x_c^2] - E[x_c]^2 with average pooling (2.5x faster than a two-pass reshape
            # with its backward); centring on the map mean first keeps the cancellation harmless.
            m_c = F.avg_pool2d(x_c, p)  # [B, C, H/p, W/p]
            var = (F.avg_pool2d(sq, p) - m_c.square()).clamp_min(0)
            groups[f"d{d}.p{p}.mean"] = _problems(m_c + mean)  # [H*W / p^2, B, C]
            groups[f"d{d}.p{p}.std"] = _problems((var + eps).sqrt())
    return groups
