"""Class conditioning for drifting (DRIFTING.md sec. 6): which classes a step trains, their guidance strengths,
and how one batch becomes one kernel problem per class. Pure tensor functions.

A conditional drift step picks `labels_per_step` classes, generates `gen_per_class` samples of each at a guidance
strength alpha drawn per class, and solves one kernel problem per class: that class's generated samples against
positives of that class, plus unconditional real negatives with weight (alpha - 1)(N - 1) / N_unc. alpha = 1 is
the plain conditional field; a larger alpha pushes the samples further from the unconditional data, which is
classifier-free guidance learnt into the one-step generator.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .rules import ConfigError, positive, require


def sample_alpha(n: int, low: float, high: float, power: float, gen: torch.Generator) -> Tensor:
    """n guidance strengths on [low, high] with density proportional to alpha^-power (inverse-CDF sampling).

    power 0 is uniform, 1 log-uniform (the official training default); larger powers favour alpha near `low`.
    """
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if low == high:
        return torch.full((n,), float(low))
    k = 1.0 - power
    if abs(k) < 1e-6:
        a = low * (high / low) ** u
    else:
        a = (low ** k + u * (high ** k - low ** k)) ** (1.0 / k)
    return a.float()


def negative_weight(alpha: Tensor, gen_per_class: int, negatives_per_class: int) -> Tensor:
    """Target weight of each unconditional negative of a class: (alpha - 1)(N - 1) / N_unc (official code).

    N counts the class's generated samples (N - 1 of them are targets of each sample, itself excluded), so at
    weight w the negatives pull with (alpha - 1) times the generated samples' total weight.
    """
    return (alpha - 1.0) * (gen_per_class - 1) / negatives_per_class


def fold_classes(groups: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """{name: [L, K*n, C]} with rows in class-major order -> {name: [L*K, n, C]}: problem l*K + k is class k at
    location l, so the drift loss solves each class separately while S and lambda stay shared per group."""
    out = {}
    for name, g in groups.items():
        L, B, C = g.shape
        if B % num_classes:
            raise ValueError(f"{name}: {B} rows do not split into {num_classes} classes")
        out[name] = g.reshape(L * num_classes, B // num_classes, C)
    return out


def per_problem(weight: Tensor, groups: dict[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    """A per-class weight [K] -> per group [L*K, 1], in fold_classes' problem order."""
    return {name: weight.to(g.device).repeat(g.shape[0] // num_classes)[:, None] for name, g in groups.items()}


def validate(conditional: bool, drift, ddpm, evaluate) -> None:
    """The class-conditioning keys: drift.conditioning, ddpm.p_uncond and the evaluate section's guidance values
    (config.DriftConfig, DDPMConfig, EvaluateConfig). The number of classes is the data's; training checks it."""
    require(0 <= ddpm.p_uncond < 1, "ddpm.p_uncond", f"must be in [0, 1), got {ddpm.p_uncond}")
    c = drift.conditioning
    positive(c.labels_per_step, "drift.conditioning.labels_per_step")
    positive(c.negatives, "drift.conditioning.negatives")
    require(c.alpha_max >= 1, "drift.conditioning.alpha_max",
            f"must be >= 1 (alpha = 1: no guidance), got {c.alpha_max}")
    require(abs(c.alpha_power) < 100, "drift.conditioning.alpha_power",
            f"must be a moderate number, got {c.alpha_power}")
    positive(evaluate.sweep.samples, "evaluate.sweep.samples")
    for key, w in [("evaluate.guidance.ddpm", evaluate.guidance.ddpm),
                   *((f"evaluate.sweep.ddpm[{i}]", w) for i, w in enumerate(evaluate.sweep.ddpm))]:
        require(w >= 0, key, f"must be >= 0 (the CFG scale; 1: no guidance), got {w}")
    for key, a in [("evaluate.guidance.drift", evaluate.guidance.drift),
                   *((f"evaluate.sweep.drift[{i}]", a) for i, a in enumerate(evaluate.sweep.drift))]:
        require(1 <= a <= c.alpha_max, key, f"must be in [1, drift.conditioning.alpha_max = {c.alpha_max}] (the "
                "range the generator is trained on), got {a}")
    if not conditional:
        return
    guided = [w for w in (evaluate.guidance.ddpm, *evaluate.sweep.ddpm) if w != 1]
    require(ddpm.p_uncond > 0 or not guided, "ddpm.p_uncond",
            f"is 0, but classifier-free guidance {guided[0] if guided else ''} needs the unconditional epsilon: "
            "set it to about 0.1, or every guidance scale to 1")
    split = c.labels_per_step * drift.nproc_per_node
    for key, n in (("drift.batch_size", drift.batch_size), ("drift.positives", drift.positives)):
        require(n % split == 0, key, f"({n}) must split evenly over drift.conditioning.labels_per_step "
                f"({c.labels_per_step}) x drift.nproc_per_node ({drift.nproc_per_node}) when conditional")
    require(drift.batch_size // c.labels_per_step >= 2, "drift.batch_size",
            f"({drift.batch_size}) must give each of the {c.labels_per_step} classes of a step at least 2 generated "
            "samples (each is a negative for the others)")


def check_classes(conditional: bool, class_names, labels_per_step: int | None, where: str) -> int:
    """The data's number of classes K for a conditional run (0 when unconditional); raises ConfigError when the
    data cannot be conditioned on."""
    if not conditional:
        return 0
    k = len(class_names)
    if k < 2:
        raise ConfigError(f"params.yaml: 'conditional' is true, but {where} has {k} class ({', '.join(class_names)}): "
                          "put the images in one sub-folder per class, or set conditional: false")
    if labels_per_step is not None and labels_per_step > k:
        raise ConfigError(f"params.yaml: 'drift.conditioning.labels_per_step' ({labels_per_step}) exceeds the "
                          f"{k} classes of {where}")
    return k
