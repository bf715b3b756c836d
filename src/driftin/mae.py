"""The paper's own feature encoder: a GroupNorm ResNet pretrained as a masked autoencoder on the current dataset.

Masked autoencoding for a conv net (DRIFTING.md sec. 2): random p x p patches of the input are zeroed (0 is the
mid-grey of [-1, 1] images), the encoder maps the masked image to feature maps at every stage, and a light
decoder that reads all stages reconstructs the pixels; the loss counts masked patches only, so the encoder must
infer missing content from context. Only the encoder is kept; `build_encoder("mae", mae_state=...)` consumes it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .rules import positive, require

# GroupNorm, not BatchNorm: a sample's features must not depend on the rest of its batch (generated vs cached
# real batches differ). The group count is an architecture constant so a state dict fully determines the net.
GN_GROUPS = 8


@dataclass(frozen=True)
class MAEConfig:
    """Encoder architecture: one stage per width (stride 2 between stages), `blocks` basic blocks per stage."""
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 1
    decoder_width: int = 128

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 or w % GN_GROUPS for w in self.widths):
            raise ValueError(f"MAEConfig.widths must be positive multiples of {GN_GROUPS}; got {self.widths}")
        if self.blocks < 1 or self.decoder_width <= 0 or self.decoder_width % GN_GROUPS:
            raise ValueError(f"MAEConfig: blocks >= 1 and decoder_width a multiple of {GN_GROUPS} required; "
                             f"got blocks={self.blocks}, decoder_width={self.decoder_width}")

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> MAEConfig:
        """Recover the encoder architecture from its state dict's shapes."""
        try:
            num_stages = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("stages."))
            blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("stages.0."))
            widths = tuple(int(state[f"stages.{i}.0.conv1.weight"].shape[0]) for i in range(num_stages))
        except (KeyError, ValueError, IndexError) as err:
            raise ValueError(f"not an MAE encoder state dict (keys {list(state)[:4]}...): {err}") from err
        return cls(widths=widths, blocks=blocks)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm; 1x1 projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class MAEEncoder(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> one map per stage, [B, widths[i], H / 2^i, W / 2^i]."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        w0 = config.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), _norm(w0), nn.ReLU())
        stages, c_in = [], w0
        for i, w in enumerate(config.widths):
            blocks = [BasicBlock(c_in if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1)
                      for j in range(config.blocks)]
            stages.append(nn.Sequential(*blocks))
            c_in = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)  # (B, w0, H, W)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps


class MAEDecoder(nn.Module):
    """Light FPN-style head: every stage, projected and resized to the patch grid, predicts its patches' pixels.

    Reading all stages (not only the deepest) trains every map that the drift loss later uses.
    """

    def __init__(self, widths: tuple[int, ...], patch_size: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.lateral = nn.ModuleList(nn.Conv2d(w, width, 1) for w in widths)
        self.head = nn.Sequential(_norm(width), nn.GELU(), nn.Conv2d(width, width, 3, 1, 1), nn.GELU(),
                                  nn.Conv2d(width, 3 * patch_size**2, 1))

    def forward(self, maps: list[torch.Tensor], grid: int) -> torch.Tensor:
        h = 0
        for lateral, m in zip(self.lateral, maps):
            m = lateral(m)
            if m.shape[-1] > grid:
                m = F.adaptive_avg_pool2d(m, grid)
            elif m.shape[-1] < grid:
                m = F.interpolate(m, size=(grid, grid), mode="nearest")
            h = h + m  # (B, width, g, g)
        return F.pixel_shuffle(self.head(h), self.patch_size)  # (B, 3, g*p, g*p)


def random_patch_mask(batch: int, grid: int, patch_size: int, mask_ratio: float,
                      gen: torch.Generator) -> torch.Tensor:
    """[B, 1, g*p, g*p] float mask, 1 on masked pixels; exactly round(ratio * g^2) patches per image."""
    num_masked = round(mask_ratio * grid * grid)
    order = torch.rand(batch, grid * grid, generator=gen).argsort(1)
    mask = (order < num_masked).float().view(batch, 1, grid, grid)
    return mask.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


def masked_reconstruction_loss(encoder: MAEEncoder, decoder: MAEDecoder, x: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel error over masked pixels. x: [B, 3, H, W], mask: [B, 1, H, W] (1 = hidden)."""
    pred = decoder(encoder(x * (1 - mask)), x.shape[-1] // decoder.patch_size)  # (B, 3, H, W)
    return ((pred - x).square() * mask).sum() / (mask.sum() * x.shape[1])


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def validate(mae, image_size: int) -> None:
    """The `encoders.mae` section (a config.MAEParams, or any object with its fields) against data.image_size."""
    for name in ("steps", "batch_size", "lr", "patch_size", "train_images", "heldout_images"):
        positive(getattr(mae, name), f"encoders.mae.{name}")
    require(isinstance(mae.seed, int) and mae.seed >= 0, "encoders.mae.seed", "must be an integer >= 0")
    require(0 < mae.mask_ratio < 1, "encoders.mae.mask_ratio", "must be in (0, 1)")
    require(image_size % mae.patch_size == 0, "encoders.mae.patch_size", "must divide data.image_size")


class Pretrained(NamedTuple):
    state: dict[str, torch.Tensor]  # encoder state dict, on CPU
    losses: list[float]  # training loss per step
    heldout_loss: float | None  # masked reconstruction error on the held-out images (fixed masks); None without


@torch.no_grad()
def heldout_reconstruction(encoder: MAEEncoder, decoder: MAEDecoder, images: np.ndarray, *, mask_ratio: float,
                           seed: int, batch_size: int = 256) -> float:
    """Mean masked-pixel squared error on uint8 images [N, H, W, 3], masks drawn from `seed` (same every call)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(encoder.parameters()).device
    grid = images.shape[1] // decoder.patch_size
    total, weight = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        mask = random_patch_mask(len(x), grid, decoder.patch_size, mask_ratio, gen)
        loss = masked_reconstruction_loss(encoder, decoder, x.to(device), mask.to(device))
        total += loss.item() * len(x)
        weight += len(x)
    return total / weight


def pretrain_mae(images: np.ndarray, *, steps: int, batch_size: int, lr: float, mask_ratio: float,
                 patch_size: int, seed: int, device: str, progress: bool = True, heldout: np.ndarray | None = None,
                 config: MAEConfig = MAEConfig()) -> Pretrained:
    """Pretrain an MAE encoder on uint8 images [N, H, W, 3]; `heldout` (same format) is scored at the end."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.dtype} {images.shape}")
    size = images.shape[1]
    if images.shape[2] != size or size % patch_size:
        raise ValueError(f"images must be square with patch_size {patch_size} dividing {images.shape[1:3]}")
    if not 0 < mask_ratio < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"need 0 < mask_ratio < 1, steps >= 1, batch_size >= 1; "
                         f"got {mask_ratio}, {steps}, {batch_size}")
    grid = size // patch_size
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        encoder, decoder = MAEEncoder(config), MAEDecoder(config.widths, patch_size, config.decoder_width)
    # channels_last: oneDNN's convolutions run ~25% faster on CPU in NHWC (and tensor cores want it on GPU).
    encoder.to(device, memory_format=torch.channels_last).train()
    decoder.to(device, memory_format=torch.channels_last).train()
    params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    gen = torch.Generator().manual_seed(seed)  # batches, flips and masks: CPU-drawn, device-independent
    data = torch.from_numpy(images)
    losses = []
    for _ in tqdm(range(steps), desc="mae pretrain", disable=not progress):
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x = data[idx].permute(0, 3, 1, 2).float() / 127.5 - 1  # uint8 NHWC -> [-1, 1] (B, 3, H, W)
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        mask = random_patch_mask(batch_size, grid, patch_size, mask_ratio, gen)
        x, mask = (t.to(device, memory_format=torch.channels_last) for t in (x, mask))
        loss = masked_reconstruction_loss(encoder, decoder, x, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    encoder.eval(), decoder.eval()  # GroupNorm only: eval changes nothing, but says what this is
    score = None if heldout is None else heldout_reconstruction(encoder, decoder, heldout, mask_ratio=mask_ratio,
                                                                 seed=seed + 1)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    return Pretrained(state, losses, score)


def mae_encoder_from_state(state: Mapping[str, torch.Tensor]) -> MAEEncoder:
    """Rebuild a pretrained MAE encoder (architecture inferred from the shapes) and load its weights."""
    encoder = MAEEncoder(MAEConfig.from_state_dict(state))
    encoder.load_state_dict(state)
    return encoder
