"""Per-step losses for the trainer: draw this rank's batch, call the pure loss. One closure per objective."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from .conditioning import fold_classes, negative_weight, per_problem, sample_alpha
from .ddpm import alphas_cumprod, ddpm_loss, linear_betas
from .drift import drift_loss
from .features import feature_groups
from .generators import DRIFT_T, to_float
from .rules import ConfigError
from .trainer import LossFn


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of a random half of the batch (the only augmentation, as in DDPM's CIFAR-10 setup)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def batch_format(fast: bool) -> torch.memory_format:
    """Memory format of the training batches: channels-last on the fast path (the trainer converts the UNet to
    match, and cuDNN's convolutions run faster in it), else as drawn."""
    return torch.channels_last if fast else torch.preserve_format


def ddpm_objective(images: torch.Tensor, batch_size: int, device: torch.device, *,
                   labels: torch.Tensor | None = None, p_uncond: float = 0.0, fast: bool = False) -> LossFn:
    """Epsilon-prediction loss on `batch_size` images per step drawn from `images` (uint8 NHWC, in memory).

    With `labels` (one per image) the model is class-conditional: a share `p_uncond` of each batch gets the null
    label instead, so one network also learns the unconditional epsilon that classifier-free guidance needs.
    `fast`: the images move to the device once (CIFAR-10: 150 MB of uint8) and each batch is gathered, converted
    and flipped there, channels-last. Indices, flips, t and noise are still drawn on the CPU generator, whose
    state the checkpoint keeps, so a resumed run draws what the uninterrupted one would have.
    """
    alpha_bar = alphas_cumprod(linear_betas()).float().to(device)
    num_t = alpha_bar.shape[0]
    fmt = batch_format(fast)
    if fast:
        images = images.to(device)

    def loss_fn(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x0 = random_flip(to_float(images[idx.to(images.device)]), gen).to(device, memory_format=fmt)  # (B, 3, H, W)
        t = torch.randint(num_t, (batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device, memory_format=fmt)
        if labels is None:
            return ddpm_loss(model, x0, t, noise, alpha_bar).mean(), {}
        null = _unwrap(model).null_label
        # Drawn on the CPU generator, like every other random choice here (resume restores it).
        y = torch.where(torch.rand(batch_size, generator=gen) < p_uncond, null, labels[idx])
        return ddpm_loss(model, x0, t, noise, alpha_bar, labels=y.to(device)).mean(), {}

    return loss_fn


def drift_objective(encoder: nn.Module, real_maps: list[torch.Tensor], *, batch_size: int, positives: int,
                    image_size: int, temperatures: tuple[float, ...], drift_kwargs: Mapping,
                    group, device: torch.device, with_input: bool = False, fast: bool = False) -> LossFn:
    """Noise -> UNet (one step) -> frozen encoder -> drift loss against cached real feature maps.

    `real_maps`: cached encoder maps of real images (and their flips), one tensor [M, C, H, W] per depth, kept on
    the CPU in fp16 (possibly memory-mapped); each step draws `positives` of them, so the encoder never runs on
    real images here.
    `with_input`: the maps start with the raw image (the `official` feature set, features.feature_groups).
    `fast`: channels-last noise for the channels-last UNet of the trainer's fast path (the cache may then be on the
    GPU: feature_cache.place; the draws stay on the CPU generator either way).
    The encoder should be in channels-last memory format (the stage converts it): its convolutions run faster,
    and every feature group's rows [L, B, C] are then contiguous in C, so stacking them copies whole rows.
    """
    num_real = real_maps[0].shape[0]
    fmt = batch_format(fast)

    def loss_fn(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z = torch.randn((batch_size, 3, image_size, image_size), generator=gen).to(device, memory_format=fmt)
        t = torch.full((batch_size,), DRIFT_T, dtype=torch.long, device=device)
        x = model(z, t)  # (B, 3, H, W) generated images, bf16 under the trainer's CUDA autocast
        # Kernel maths in fp32 even when the generator runs bf16 (DRIFTING.md sec. 4): the generated images go
        # through the encoder in fp32, the path the cached real maps took, and the drift field never sees bf16.
        with torch.autocast(device.type, enabled=False):
            gen_feats = feature_groups(encoder(x.float().contiguous(memory_format=torch.channels_last)),
                                       with_input=with_input)
            idx = torch.randint(num_real, (positives,), generator=gen)
            # Channels-last like the generated maps, converted per draw: the cache itself may be memory-mapped.
            pos_feats = feature_groups([m[idx.to(m.device)].to(device, memory_format=torch.channels_last).float()
                                        for m in real_maps], with_input=with_input)
            loss, stats = drift_loss(gen_feats, pos_feats, temperatures, group=group, **drift_kwargs)
        # Per-group stats ("name/group") would add dozens of CSV columns; the curves keep the overall ones.
        return loss, {k: v for k, v in stats.items() if "/" not in k and k != "loss"}

    return loss_fn


def _unwrap(model: nn.Module) -> nn.Module:
    """The UNet inside a DDP wrapper (its config and null label)."""
    return getattr(model, "module", model)


def _shared(t: torch.Tensor, group, device: torch.device) -> torch.Tensor:
    """Rank 0's draw on every rank (labels and alphas must agree: each class is one problem across ranks)."""
    if group is None:
        return t
    buf = t.to(device)
    dist.broadcast(buf, src=dist.get_global_rank(group, 0), group=group)
    return buf.cpu()


def conditional_drift_objective(encoder: nn.Module, real_maps: list[torch.Tensor], real_labels: torch.Tensor, *,
                                num_classes: int, labels_per_step: int, batch_size: int, positives: int,
                                negatives: int, alpha_range: tuple[float, float], alpha_power: float,
                                image_size: int, temperatures: tuple[float, ...], drift_kwargs: Mapping,
                                group, world_size: int, device: torch.device, with_input: bool = False,
                                fast: bool = False) -> LossFn:
    """Class-conditional drifting (DRIFTING.md sec. 6, conditioning.py): per step `labels_per_step` classes,
    each with batch_size/labels_per_step generated samples at its own alpha, positives/labels_per_step cached
    real samples of that class and `negatives` unconditional cached real samples weighted by
    negative_weight(alpha); one kernel problem per class and feature location. `with_input`: the maps start with
    the raw image (the `official` feature set, features.feature_groups). `fast`: as drift_objective.

    Sizes are this rank's; under DDP every rank trains the same classes and alphas (rank 0 draws them) and the
    kernel problem of a class spans the generated and real rows of all ranks.
    """
    k = labels_per_step
    g, p = batch_size // k, positives // k
    num_real = real_maps[0].shape[0]
    pools = [torch.nonzero(real_labels == c).squeeze(1) for c in range(num_classes)]
    empty = [c for c, pool in enumerate(pools) if not len(pool)]
    if empty:
        # A params problem, not a bug: one paragraph naming the key, no traceback (cli.run prints ConfigError so).
        raise ConfigError(f"params.yaml: the feature cache has no real image of class(es) {empty}: raise "
                          "'encoders.cache_images' so every class is cached (it is class-balanced).")
    fmt = batch_format(fast)

    def draw(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        # Channels-last like the generated maps, converted per draw: the cache itself may be memory-mapped.
        return feature_groups([m[idx.to(m.device)].to(device, memory_format=torch.channels_last).float()
                               for m in real_maps], with_input=with_input)

    def loss_fn(model: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        classes = _shared(torch.randperm(num_classes, generator=gen)[:k], group, device)
        alpha = _shared(sample_alpha(k, *alpha_range, alpha_power, gen), group, device)
        z = torch.randn((k * g, 3, image_size, image_size), generator=gen).to(device, memory_format=fmt)
        t = torch.full((k * g,), DRIFT_T, dtype=torch.long, device=device)
        x = model(z, t, classes.repeat_interleave(g).to(device), alpha.repeat_interleave(g).to(device))
        with torch.autocast(device.type, enabled=False):  # the kernel in fp32: see drift_objective
            gen_feats = feature_groups(encoder(x.float().contiguous(memory_format=torch.channels_last)),
                                       with_input=with_input)
            pos_idx = torch.cat([pools[c][torch.randint(len(pools[c]), (p,), generator=gen)] for c in classes.tolist()])
            neg_idx = torch.randint(num_real, (k * negatives,), generator=gen)
            w = negative_weight(alpha, g * world_size, negatives * world_size)
            gen_f = fold_classes(gen_feats, k)
            loss, stats = drift_loss(gen_f, fold_classes(draw(pos_idx), k), temperatures,
                                     neg_feats=fold_classes(draw(neg_idx), k), neg_weight=per_problem(w, gen_f, k),
                                     group=group, **drift_kwargs)
        stats = {key: v for key, v in stats.items() if "/" not in key and key != "loss"}
        return loss, {**stats, "alpha": float(alpha.mean())}

    return loss_fn
