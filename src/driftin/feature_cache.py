"""Real-image feature cache for drift training: the frozen encoder runs on real images once, here, instead of
on every step; each step then draws positives from this cache and encodes generated images only."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .config import Params
from .features import feature_groups
from .generators import to_float
from .rules import positive, require

# Share of a GPU's free memory the cached real features may take on the fast path; the rest is left to the model,
# its activations, the optimizer and the encoder. A larger cache stays memory-mapped in host memory.
GPU_CACHE_SHARE = 0.5


def validate(cache_images: int, positives: int) -> None:
    """`encoders.cache_images` against the `drift.positives` drawn from the cache each step."""
    positive(cache_images, "encoders.cache_images")
    require(cache_images >= positives // 2, "encoders.cache_images",
            f"({cache_images}) is too small to draw drift.positives ({positives}) per step "
            "(the cache holds each image and its flip)")


def encoder_kwargs(params: Params, mae_state: dict | None) -> dict:
    """build_encoder's arguments for the configured encoder."""
    e = params.encoders
    common = {"feature_set": e.feature_set}
    if params.encoder == "mae":
        return {"mae_state": mae_state, **common}
    if params.encoder == "resnet18":
        return {"weights": e.resnet18.weights, **common}
    if params.encoder == "dinov2":
        return {"weights": e.dinov2.weights, "resize": e.dinov2.resize, **common}
    return common


def balanced_subset(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n indices drawn at random so that the classes' counts differ by at most one where the data allows: a
    random permutation, reordered round-robin over classes. Conditional drift training draws every class's
    positives from the cache, so no class may be missing from it."""
    perm = torch.randperm(len(labels), generator=gen)
    lab = labels[perm]
    # Occurrence number of each element within its class, in permutation order.
    order = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(lab)
    rank[order] = torch.arange(len(lab)) - starts[lab[order]]
    return perm[torch.argsort(rank, stable=True)[:n]]


@torch.no_grad()
def encode(encoder: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 NHWC images -> one fp16 CPU tensor [N, C, H, W] per encoder depth (fp16 halves the cache)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        maps = encoder(to_float(images[start:start + batch_size]).to(device))
        chunks.append([m.half().cpu() for m in maps])
    return [torch.cat(depth) for depth in zip(*chunks)]


def _free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]


def place(maps: list[torch.Tensor], device: torch.device, *, fast: bool) -> tuple[list[torch.Tensor], str]:
    """The cached maps where training reads them, and where that is: on `device` when `fast`, the device is not
    the CPU and the maps fit in GPU_CACHE_SHARE of its free memory; else as loaded ("host", memory-mapped).
    Measured on an H200, positives read from the host-memory cache were slower than re-encoding real images on the
    GPU; on the device each step's positives are a gather there (the indices still come from the CPU generator)."""
    if not fast or device.type == "cpu":
        return maps, "host"
    need = sum(m.numel() * m.element_size() for m in maps)
    if need > GPU_CACHE_SHARE * _free_bytes(device):
        return maps, "host"
    return [m.to(device) for m in maps], str(device)


def with_flips(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images followed by their horizontal mirror images."""
    return torch.cat([images, images.flip(2)])


@torch.no_grad()
def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def positives_timing(encoder: nn.Module, real: torch.Tensor, maps: list[torch.Tensor], positives: int,
                     device: torch.device, gen: torch.Generator, with_input: bool = False) -> dict[str, float]:
    """Median time to get one step's positive feature groups: from the cache vs re-encoding real images."""
    idx = torch.randint(len(real), (positives,), generator=gen)
    cached = median_seconds(lambda: feature_groups([m[idx].to(device).float() for m in maps], with_input=with_input))
    encoded = median_seconds(lambda: feature_groups(encoder(to_float(real[idx]).to(device)), with_input=with_input))
    return {"positives_ms_cached": round(cached * 1e3, 2), "positives_ms_reencoded": round(encoded * 1e3, 2),
            "positives_speedup": round(encoded / cached, 2)}
