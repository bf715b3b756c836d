"""Sample-quality scores from cached features and evaluator logits, each with a bootstrap 95% interval.

Pure functions of tensors (no files, no models, no globals), so the `fid` stage and evaluation during training
call the same code. FID and KID are computed here rather than through torch-fidelity because the bootstrap needs
them as functions of per-sample weights; with unit weights they equal torch-fidelity's (tested).

- FID (Heusel et al.): ||mu_g - mu_r||^2 + tr(S_g) + tr(S_r) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2), unbiased covariances.
- KID (Binkowski et al.): the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, over all
  samples at once. torch-fidelity averages the same estimator over random subsets; both are unbiased for the same
  quantity, and the full-set one has the lower variance.
- Recognisability: how the evaluator classifies the samples. `recognisability` is the share assigned to the
  requested class (needs labels: conditional models, or held-out real images as the reference); `class_entropy`
  the entropy of the predicted-class histogram over log K (1 = every class equally often, 0 = one class only);
  `confidence` the mean top-class probability (blobs that look like no class score low).

Intervals: the generated samples are resampled with replacement (`draws` times, numpy's seeded generator, so the
same on every machine); the reference set is held fixed. Each resample is a vector of counts w (sum N) and every
score takes it as weights. KID's pair sums skip pairs of a sample with itself, so duplicates do not inflate it.
FID is biased (upwards, by ~tr(S_g)/N), and a resample's duplicates shrink its effective sample size to ~0.63 N, so
resampled FIDs sit well above the estimate (measured: +25% at D = 128, N = 1000), and a plain percentile interval
can miss the estimate altogether. So the interval is the spread of the bootstrap distribution around its own mean,
placed around the estimate: [x + q2.5 - mean, x + q97.5 - mean] ("how far would another N samples move it").
For the unbiased scores the mean is the estimate, and this is the plain percentile interval. Intervals are clipped
to each score's range (FID >= 0; entropy, confidence, recognisability in [0, 1]); KID, unbiased, can be negative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

INTERVAL = (2.5, 97.5)  # percentiles of the bootstrap distribution: a 95% interval
RANGES = {"fid": (0.0, math.inf), "class_entropy": (0.0, 1.0), "confidence": (0.0, 1.0), "recognisability": (0.0, 1.0)}
# Reference kernel sums are taken in blocks of this many rows: 50k reference features would need a 10 GB matrix.
_BLOCK = 4096


def significant(x: float, digits: int = 6) -> float:
    """Round to significant digits, not decimals: a KID of 3e-7 stays 3e-7 instead of becoming 0.0."""
    return float(f"{x:.{digits}g}")


def _poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    # Dot products in float32 (the features' precision; 4x faster on CPU), the cube and every sum in float64.
    return (a.float() @ b.float().T / a.shape[1] + 1).double() ** 3  # (N, M)


@dataclass(frozen=True)
class ReferenceStats:
    """What every score needs from the reference features, computed once per feature set."""

    features: Tensor  # (M, D) float64
    mu: Tensor  # (D,)
    sigma_sqrt: Tensor  # (D, D) symmetric square root of the covariance
    sigma_trace: float
    kernel_mean: float  # mean of k(r_i, r_j) over pairs i != j


def _sym_sqrt(a: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(a)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def reference_stats(phi_ref: np.ndarray | Tensor) -> ReferenceStats:
    """Statistics of reference features [M, D] (M >= 2)."""
    r = torch.as_tensor(phi_ref).double()
    m = len(r)
    if r.ndim != 2 or m < 2:
        raise ValueError(f"reference features must be [M >= 2, D], got {tuple(r.shape)}")
    sigma = torch.cov(r.T)  # (D, D), divides by M - 1
    off_diagonal = 0.0
    for start in range(0, m, _BLOCK):
        block = _poly_kernel(r[start:start + _BLOCK], r)  # (B, M)
        off_diagonal += float(block.sum() - block.diagonal(offset=start).sum())
    return ReferenceStats(r, r.mean(0), _sym_sqrt(sigma), float(sigma.trace()), off_diagonal / (m * (m - 1)))


def fid(phi_gen: Tensor, ref: ReferenceStats, weights: Tensor | None = None) -> float:
    """FID of generated features [N, D] (optionally weighted by counts [N] summing to N) against `ref`."""
    x = phi_gen.double()
    n = len(x)
    w = torch.ones(n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    mu = w @ x / n  # (D,)
    xc = x - mu
    sigma = (xc.T * w) @ xc / (n - 1)  # (D, D)
    # tr sqrt(S_g S_r) = sum of sqrt(eigenvalues) of the similar, symmetric PSD S_r^1/2 S_g S_r^1/2.
    cross = torch.linalg.eigvalsh(ref.sigma_sqrt @ sigma @ ref.sigma_sqrt).clamp(min=0).sqrt().sum()
    return float((mu - ref.mu).square().sum() + sigma.trace() + ref.sigma_trace - 2 * cross)


@dataclass(frozen=True)
class KernelSums:
    """Kernel terms of the generated samples that KID needs for any weighting."""

    gen_gen: Tensor  # (N, N) k(g_i, g_j)
    gen_ref: Tensor  # (N,) mean over the reference of k(g_i, r)
    ref_ref: float  # mean of k(r_i, r_j), i != j


def kernel_sums(phi_gen: Tensor, ref: ReferenceStats) -> KernelSums:
    g = phi_gen.double()
    gen_ref = sum(_poly_kernel(g, r).sum(1) for r in ref.features.split(_BLOCK)) / len(ref.features)  # (N,)
    return KernelSums(_poly_kernel(g, g), gen_ref, ref.kernel_mean)


def kid(k: KernelSums, weights: Tensor | None = None) -> float:
    """Unbiased MMD^2 (KID); with count weights w the generated-pair mean runs over pairs of distinct samples."""
    n = len(k.gen_ref)
    w = torch.ones(n, dtype=k.gen_gen.dtype, device=k.gen_gen.device) if weights is None else weights.to(k.gen_gen)
    diagonal = (w.square() * k.gen_gen.diagonal()).sum()
    gen_gen = (w @ k.gen_gen @ w - diagonal) / (n * n - w.square().sum())
    return float(gen_gen + k.ref_ref - 2 * (w @ k.gen_ref) / n)


def recognisability(logits: Tensor, labels: Tensor | None = None, weights: Tensor | None = None) -> dict[str, float]:
    """Evaluator logits [N, K] (and requested classes [N], if any) -> class_entropy, confidence[, recognisability]."""
    n, classes = logits.shape
    w = torch.ones(n, dtype=torch.float64, device=logits.device) if weights is None else weights.to(logits.device,
                                                                                                     torch.float64)
    probs = logits.double().softmax(1)  # (N, K)
    predicted = probs.argmax(1)  # (N,)
    hist = torch.zeros(classes, dtype=torch.float64, device=logits.device).index_add_(0, predicted, w) / w.sum()
    entropy = torch.special.entr(hist).sum() / math.log(classes)  # entr(p) = -p ln p, entr(0) = 0
    # abs: one class only sums to -0.0, which JSON would print as a negative entropy.
    out = {"class_entropy": abs(float(entropy)), "confidence": float(w @ probs.max(1).values / w.sum())}
    if labels is not None:
        out["recognisability"] = float(w @ (predicted == labels.to(predicted)).double() / w.sum())
    return out


def scores(phi_gen: Tensor, ref: ReferenceStats, logits: Tensor | None = None, labels: Tensor | None = None,
           weights: Tensor | None = None, k: KernelSums | None = None) -> dict[str, float]:
    """Every score of one (possibly resampled) generated set; `k` saves recomputing kernel sums per resample."""
    out = {"fid": fid(phi_gen, ref, weights), "kid": kid(k or kernel_sums(phi_gen, ref), weights)}
    if logits is not None:
        out.update(recognisability(logits, labels, weights))
    return out


def bootstrap_counts(n: int, draws: int, seed: int) -> np.ndarray:
    """Resamples of n items with replacement, as counts [draws, n] (each row sums to n)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=draws)


def scores_with_intervals(phi_gen: np.ndarray | Tensor, ref: ReferenceStats, *,
                          logits: np.ndarray | Tensor | None = None, labels: np.ndarray | Tensor | None = None,
                          draws: int, seed: int) -> dict[str, float]:
    """Scores of generated features [N, D] (and logits [N, K], labels [N]) with `<score>_lo` / `<score>_hi`:
    the bootstrap 95% interval over the generated samples."""
    phi = torch.as_tensor(phi_gen).double()
    if phi.ndim != 2 or phi.shape[1] != ref.features.shape[1] or len(phi) < 2:
        raise ValueError(f"generated features must be [N >= 2, {ref.features.shape[1]}], got {tuple(phi.shape)}")
    logits = None if logits is None else torch.as_tensor(logits)
    labels = None if labels is None else torch.as_tensor(labels)
    k = kernel_sums(phi, ref)
    point = scores(phi, ref, logits, labels, k=k)
    resampled = [scores(phi, ref, logits, labels, weights=torch.from_numpy(w), k=k)
                 for w in bootstrap_counts(len(phi), draws, seed)]
    out = {}
    for name, value in point.items():
        spread = np.array([r[name] for r in resampled])  # (draws,)
        lo, hi = np.percentile(spread, INTERVAL) - spread.mean() + value
        lo, hi = np.clip([lo, hi], *RANGES.get(name, (-math.inf, math.inf)))
        out.update({name: value, f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out
