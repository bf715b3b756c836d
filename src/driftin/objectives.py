"""Per-step losses for the trainer: draw this rank's batch, call the pure loss. One closure per objective."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .ddpm import alphas_cumprod, ddpm_loss, linear_betas
from .drift import drift_loss
from .features import feature_groups
from .generators import DRIFT_T, to_float
from .trainer import LossFn


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of a random half of the batch (the only augmentation, as in DDPM's CIFAR-10 setup)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def ddpm_objective(images: torch.Tensor, batch_size: int, device: torch.device) -> LossFn:
    """Epsilon-prediction loss on `batch_size` images per step drawn from `images` (uint8 NHWC, in memory)."""
    alpha_bar = alphas_cumprod(linear_betas()).float().to(device)
    num_t = alpha_bar.shape[0]

    def loss_fn(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x0 = random_flip(to_float(images[idx]), gen).to(device)  # (B, 3, H, W)
        t = torch.randint(num_t, (batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        return ddpm_loss(model, x0, t, noise, alpha_bar).mean(), {}

    return loss_fn


def drift_objective(encoder: nn.Module, real_maps: list[torch.Tensor], *, batch_size: int, positives: int,
                    image_size: int, temperatures: tuple[float, ...], drift_kwargs: Mapping,
                    group, device: torch.device) -> LossFn:
    """Noise -> UNet (one step) -> frozen encoder -> drift loss against cached real feature maps.

    `real_maps`: cached encoder maps of real images (and their flips), one tensor [M, C, H, W] per depth, kept on
    the CPU in fp16 (possibly memory-mapped); each step draws `positives` of them, so the encoder never runs on
    real images here.
    The encoder should be in channels-last memory format (the stage converts it): its convolutions run faster,
    and every feature group's rows [L, B, C] are then contiguous in C, so stacking them copies whole rows.
    """
    num_real = real_maps[0].shape[0]

    def loss_fn(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z = torch.randn((batch_size, 3, image_size, image_size), generator=gen).to(device)
        t = torch.full((batch_size,), DRIFT_T, dtype=torch.long, device=device)
        x = model(z, t)  # (B, 3, H, W) generated images, bf16 under the trainer's CUDA autocast
        # Kernel maths in fp32 even when the generator runs bf16 (DRIFTING.md sec. 4): the generated images go
        # through the encoder in fp32, the path the cached real maps took, and the drift field never sees bf16.
        with torch.autocast(device.type, enabled=False):
            gen_feats = feature_groups(encoder(x.float().contiguous(memory_format=torch.channels_last)))
            idx = torch.randint(num_real, (positives,), generator=gen)
            # Channels-last like the generated maps, converted per draw: the cache itself may be memory-mapped.
            pos_feats = feature_groups([m[idx].to(device, memory_format=torch.channels_last).float()
                                        for m in real_maps])
            loss, stats = drift_loss(gen_feats, pos_feats, temperatures, group=group, **drift_kwargs)
        # Per-group stats ("name/group") would add dozens of CSV columns; the curves keep the overall ones.
        return loss, {k: v for k, v in stats.items() if "/" not in k and k != "loss"}

    return loss_fn
