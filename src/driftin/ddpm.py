"""DDPM maths as pure tensor functions: schedule, forward process, epsilon loss, DDIM sampler.

Ho et al. 2020 (DDPM) for the schedule and loss; Song et al. 2021 (DDIM) for the sampler, in the form of
diffusers' `DDIMScheduler(clip_sample=True, set_alpha_to_one=True, timestep_spacing="leading")`. Class labels
are optional: label dropout in the loss and classifier-free guidance in the sampler (Ho & Salimans 2022).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .rules import positive, require

# eps_model(x_t, t) for an unconditional model, eps_model(x_t, t, labels) for a class-conditional one.
EpsModel = Callable[..., Tensor]
T_TRAIN = 1000  # diffusion steps T the model is trained on; DDIM samples with a strided subset of them


def linear_betas(T: int = T_TRAIN, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear variance schedule beta_1..beta_T, float64 [T]."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def alphas_cumprod(betas: Tensor) -> Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), same shape and dtype as betas."""
    return torch.cumprod(1.0 - betas, dim=0)


def _gather(alpha_bar: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """alpha_bar[t] as a (B, 1, 1, 1) tensor in `like`'s dtype and device."""
    return alpha_bar.to(like.device)[t.long()].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """Forward process x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; t [B] long, x0/noise [B, ...]."""
    a = _gather(alpha_bar, t, x0)  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def drop_labels(labels: Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> Tensor:
    """labels [B] with each one replaced by null_label with probability p_uncond (classifier-free guidance's label
    dropout). One uniform per label from `generator`, else from the default RNG of labels' device: seeded, the
    same labels are dropped on every run."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    u = torch.rand(labels.shape, generator=generator, device=labels.device)  # (B,)
    return torch.where(u < p_uncond, torch.full_like(labels, null_label), labels)


def ddpm_loss(eps_model: EpsModel, x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor, *,
              labels: Tensor | None = None, p_uncond: float = 0.0, null_label: int | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """L_simple per sample: mean over pixels of (eps_model(x_t, t) - eps)^2, shape [B]. Caller draws t and noise.

    With labels [B] the model is called as eps_model(x_t, t, labels), after drop_labels(labels, p_uncond,
    null_label, generator) when p_uncond > 0, so one network learns both the conditional and the unconditional
    epsilon.
    """
    x_t = q_sample(x0, t, noise, alpha_bar)  # (B, C, H, W)
    if labels is None:
        if p_uncond:
            raise ValueError("p_uncond > 0 needs labels to drop")
        eps_hat = eps_model(x_t, t)
    else:
        if p_uncond:
            if null_label is None:
                raise ValueError("label dropout (p_uncond > 0) needs the null_label")
            labels = drop_labels(labels, p_uncond, null_label, generator)
        eps_hat = eps_model(x_t, t, labels)
    eps_hat = eps_hat.float()  # fp32 even when the model ran under bf16 autocast
    return (eps_hat - noise.float()).square().flatten(1).mean(dim=1)  # (B,)


def ddim_timesteps(num_steps: int, T: int = T_TRAIN) -> Tensor:
    """Descending DDIM timesteps i * (T // num_steps), i = num_steps-1..0; for 50 of 1000: 980, 960, ..., 0.

    When T is not divisible by num_steps the stride is floored (diffusers' "leading" spacing), so the first
    step starts below T - T/num_steps; every step still jumps by the same stride.
    """
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    return torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * (T // num_steps)  # (num_steps,)


def validate_ddim_steps(num_steps: int, key: str) -> None:
    """A params key that sets the number of DDIM steps (evaluate.ddim_steps, benchmark.ddim_steps)."""
    positive(num_steps, key)
    require(num_steps <= T_TRAIN, key, f"must be <= {T_TRAIN} (the DDPM training steps T)")


def ddim_nfe(num_steps: int, guidance: float = 1.0) -> int:
    """Network evaluations per sample of ddim_sample: one per step, two with guidance != 1 (the conditional and the
    unconditional epsilon; ddim_sample runs them as one call on 2B rows, so count rows, not calls)."""
    return num_steps * (1 if guidance == 1.0 else 2)


def guided_eps(eps_model: EpsModel, labels: Tensor | None, guidance: float,
               null_label: int | None) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, t) -> epsilon with classifier-free guidance, eps_u + guidance * (eps_c - eps_u).

    labels None: the unconditional model, eps_model(x, t). guidance 1: the conditional epsilon alone, one network
    evaluation. Otherwise one call on the 2B rows [x; x] with labels [labels; null_label].
    """
    if labels is None:
        if guidance != 1.0:
            raise ValueError(f"guidance {guidance} needs labels (1 is the unguided sampler)")
        return eps_model
    if guidance == 1.0:
        return lambda x, t: eps_model(x, t, labels)
    if null_label is None:
        raise ValueError("classifier-free guidance (guidance != 1) needs the null_label")
    both = torch.cat([labels, torch.full_like(labels, null_label)])  # (2B,)

    def eps(x: Tensor, t: Tensor) -> Tensor:
        eps_c, eps_u = eps_model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)  # 2 x (B, C, H, W)
        return eps_u + guidance * (eps_c - eps_u)

    return eps


@torch.no_grad()
def ddim_sample(
    eps_model: EpsModel,
    x_T: Tensor,
    num_steps: int = 50,
    eta: float = 0.0,
    *,
    alpha_bar: Tensor | None = None,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    guidance: float = 1.0,
    null_label: int | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x_T to x_0 in x_T's dtype; eta=0 is deterministic.

    x_0 predictions are clipped to [-1, 1] while the direction term keeps the model's epsilon, and
    alpha_bar before the first training step is 1, exactly as diffusers' DDIMScheduler(clip_sample=True,
    set_alpha_to_one=True). eta > 0 draws fresh N(0, I) noise every step from `generator`.

    labels [B] sample a class-conditional model with classifier-free guidance `guidance` (guided_eps; the
    unconditional epsilon uses `null_label`); ddim_nfe(num_steps, guidance) network evaluations per sample.
    """
    if not 0.0 <= eta <= 1.0:  # eta > 1 makes the direction coefficient's radicand negative
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    eps_model = guided_eps(eps_model, labels, guidance, null_label)
    if alpha_bar is None:
        alpha_bar = alphas_cumprod(linear_betas())
    T = alpha_bar.shape[0]
    timesteps = ddim_timesteps(num_steps, T)
    stride = T // num_steps
    ab = alpha_bar.double().tolist()  # python floats: schedule maths stays float64 whatever x_T's dtype
    x = x_T
    # Every step's t as one device tensor, built once: a step indexes a view instead of filling a new tensor.
    t_rows = timesteps.to(device=x.device, dtype=torch.long)[:, None].expand(-1, x.shape[0])
    for i, t in enumerate(timesteps.tolist()):
        a_t = ab[t]
        a_prev = ab[t - stride] if t - stride >= 0 else 1.0
        eps = eps_model(x, t_rows[i]).to(x.dtype)
        x0_hat = ((x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1.0, 1.0)  # (B, C, H, W)
        # sigma_t(eta) of DDIM eq. 16; zero for eta = 0 (deterministic DDIM).
        sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0_hat + (1.0 - a_prev - sigma**2) ** 0.5 * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x
