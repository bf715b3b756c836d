"""The shared, objective-agnostic UNet: `UNet(x, t) -> x'`, optionally `UNet(x, t, labels, alpha)`.

Architecture of the DDPM CIFAR-10 UNet (Ho et al. 2020) with the improved-DDPM conditioning (Nichol & Dhariwal
2021): each residual block applies adaptive GroupNorm, `GroupNorm(h) * (1 + scale) + shift`, with `scale, shift`
projected from the timestep embedding. The network knows nothing about noise: DDPM feeds it (x_t, t) and reads
epsilon; the drifting generator feeds it (noise, t) and reads an image.

Class conditioning (num_classes = K > 0) adds a label embedding of K + 1 rows to the time embedding, as DiT does
(initialised at unit scale, not DiT's 0.02: see UNet.__init__);
row K is the null label that classifier-free guidance trains and samples with. The drifting generator's guidance
strength alpha (DRIFTING.md sec. 6) can be a further input, embedded and added to the class embedding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rules import ConfigError, choice, require

IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class UNetConfig:
    """Width, depth and regularisation of the UNet; resolutions are in pixels of the feature map."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    dropout: float = 0.1
    # DDPM zero-initialises the last conv so the initial epsilon guess is 0. The drifting generator must not:
    # a zero last conv makes every sample identical, so the kernel drift sees one point (DRIFTING.md sec. 4).
    zero_init_out: bool = False
    norm_groups: int = 32
    # 0: unconditional (no label embedding, the state dict of every model file so far). K > 0: labels 0..K-1
    # plus the null label K.
    num_classes: int = 0
    # Embed a per-sample guidance strength alpha (the drifting generator's CFG input); needs num_classes > 0.
    alpha_cond: bool = False


UNET_PRESETS: dict[str, UNetConfig] = {
    "base": UNetConfig(),
    "small": UNetConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), num_heads=4),
    "tiny": UNetConfig(
        ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), num_heads=2, norm_groups=8
    ),
}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal embedding of (possibly fractional) timesteps: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    """Pre-activation residual block with adaptive GroupNorm time conditioning."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))  # (B, out, H, W)
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    def __init__(self, ch: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"attention channels {ch} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # 3 x (B, heads, HW, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """`UNet(x, t) -> x'`: x [B, 3, H, W], t [B] float or integer timesteps; output has x's shape."""

    def __init__(self, config: UNetConfig, image_size: int) -> None:
        super().__init__()
        _validate(config, image_size)
        self.config, self.image_size = config, image_size
        ch, groups, emb_dim = config.ch, config.norm_groups, 4 * config.ch

        self.emb = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.num_classes:
            self.label_emb = nn.Embedding(config.num_classes + 1, emb_dim)
            # N(0, 1) (torch's default), not DiT's std 0.02: DiT trains for 400k steps, budgets here are hundreds.
            # Measured on two-colour data where the label alone decides the colour (tests/test_conditioning.py): at
            # std 0.02 a drifting generator drew one colour for both labels for 300 steps and DDPM followed the
            # label only faintly after 600; at std 1 both followed it within 150 steps.
            nn.init.normal_(self.label_emb.weight, std=1.0)
        if config.alpha_cond:
            self.alpha_emb = nn.Linear(ch, emb_dim)
        self.conv_in = nn.Conv2d(IMAGE_CHANNELS, ch, 3, padding=1)

        def level(in_ch: int, out_ch: int, res: int) -> nn.ModuleList:
            block = [ResBlock(in_ch, out_ch, emb_dim, config.dropout, groups)]
            if res in config.attn_resolutions:
                block.append(AttnBlock(out_ch, config.num_heads, groups))
            return nn.ModuleList(block)

        # Encoder: record the channels of every activation that is pushed as a skip connection.
        self.down = nn.ModuleList()
        skip_chs, cur, res = [ch], ch, image_size
        for i, mult in enumerate(config.ch_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(level(cur, ch * mult, res))
                cur = ch * mult
                skip_chs.append(cur)
            if i < len(config.ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(cur)]))
                res //= 2
                skip_chs.append(cur)

        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, emb_dim, config.dropout, groups),
                AttnBlock(cur, config.num_heads, groups),
                ResBlock(cur, cur, emb_dim, config.dropout, groups),
            ]
        )

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip connection.
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(config.ch_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(level(cur + skip_chs.pop(), ch * mult, res))
                cur = ch * mult
            if i > 0:
                self.up.append(nn.ModuleList([Upsample(cur)]))
                res *= 2

        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = nn.Conv2d(cur, IMAGE_CHANNELS, 3, padding=1)
        if config.zero_init_out:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    @property
    def null_label(self) -> int:
        """The label index of "no class" (classifier-free guidance's unconditional input)."""
        if not self.config.num_classes:
            raise ValueError("an unconditional UNet (num_classes = 0) has no null label")
        return self.config.num_classes

    def _condition(self, labels: Tensor | None, alpha: Tensor | float | None, like: Tensor) -> Tensor | None:
        """Class (+ alpha) embedding (B, 4ch) to add to the time embedding; None for an unconditional net."""
        cfg = self.config
        if not cfg.num_classes:
            if labels is not None or alpha is not None:
                raise ValueError("this UNet is unconditional (num_classes = 0): it takes no labels or alpha")
            return None
        B = like.shape[0]
        if labels is None:
            labels = torch.full((B,), cfg.num_classes, dtype=torch.long, device=like.device)
        c = self.label_emb(labels)  # (B, 4ch)
        if cfg.alpha_cond:
            # alpha = 1 is the unguided generator (the official code draws alpha from [1, 4]).
            alpha = torch.as_tensor(1.0 if alpha is None else alpha, dtype=torch.float32, device=like.device)
            # Unscaled: the official code scales it by 0.02 next to a label table of std 0.02, i.e. both at one
            # scale; with the label table at std 1 (above) a 0.02 here left alpha 50x weaker than the label, and
            # 360 steps never learnt to use it (the alpha sweep was flat, FID 38.0 at every alpha).
            c = c + self.alpha_emb(timestep_embedding(alpha.expand(B), cfg.ch).to(c.dtype))
        elif alpha is not None:
            raise ValueError("this UNet has no alpha input (alpha_cond = False)")
        return c.to(like.dtype)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None,
                alpha: Tensor | float | None = None) -> Tensor:
        """x [B, 3, H, W], t [B]; labels [B] long in 0..K (K = null label; None: all null) and alpha (a number
        or [B]; None: 1) only for a conditional net."""
        emb = self.emb(timestep_embedding(t, self.config.ch).to(x.dtype))  # (B, 4ch)
        cond = self._condition(labels, alpha, emb)
        if cond is not None:
            emb = emb + cond  # (B, 4ch)
        h = self.conv_in(x)  # (B, ch, H, W)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb)  # (B, ch*mult, H/2^i, W/2^i)
            skips.append(h)
        h = self._run(self.mid, h, emb)  # (B, ch*mult[-1], H/2^(L-1), W/2^(L-1))
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, cur + skip, h, w)
            h = self._run(block, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)


def _validate(config: UNetConfig, image_size: int) -> None:
    levels = len(config.ch_mult)
    if image_size < 1 or image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} cannot be halved {levels - 1} times (ch_mult {config.ch_mult})")
    resolutions = {image_size // 2**i for i in range(levels)}
    missing = set(config.attn_resolutions) - resolutions
    if missing:
        raise ValueError(
            f"attention resolutions {sorted(missing)} do not occur for image_size {image_size} "
            f"(resolutions {sorted(resolutions)})"
        )
    if config.ch % config.norm_groups:  # every width, skip concatenations included, is a multiple of ch
        raise ValueError(f"ch {config.ch} not divisible by norm_groups {config.norm_groups}")
    if config.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {config.num_classes}")
    if config.alpha_cond and not config.num_classes:
        raise ValueError("alpha_cond needs a class-conditional UNet (num_classes > 0)")


def validate(unet, image_size: int) -> None:
    """The `unet` section (a config.UNetParams) against data.image_size."""
    require(image_size % 8 == 0, "data.image_size", f"must be a multiple of 8 (the UNet halves it), got {image_size}")
    choice(unet.preset, tuple(UNET_PRESETS), "unet.preset")
    try:  # the preset must be able to halve the image and meet its attention resolutions
        _validate(UNET_PRESETS[unet.preset], image_size)
    except ValueError as e:
        raise ConfigError(f"params.yaml: 'data.image_size' ({image_size}) does not fit unet.preset "
                          f"'{unet.preset}': {e}") from None
    require(0 <= unet.dropout < 1, "unet.dropout", f"must be in [0, 1), got {unet.dropout}")


def build_unet(preset: str, image_size: int, **overrides: object) -> UNet:
    """UNet from a named preset in UNET_PRESETS, with config fields replaced by `overrides`."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; choose from {sorted(UNET_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown UNetConfig fields {sorted(unknown)} for preset {preset!r}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # yaml gives lists
    return UNet(dataclasses.replace(UNET_PRESETS[preset], **tuples), image_size)
