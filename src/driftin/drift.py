"""Kernel drift field and loss of "Generative Modeling via Drifting" (Deng et al. 2026).

Implements DRIFTING.md sections 1-3: one drift field per batch of kernel problems [L, N, C], the summed
per-group loss, and the DDP form in which every problem spans the global batch at O(N_local * N_global * C)
per rank. All kernel maths runs in fp32 without gradient (it is the stopgrad target); distances use cdist's
matmul form, so keep fp32 matmul precision at "highest" (TF32 would blur near neighbours at tau=0.02).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .rules import positive, require

ProcessGroup = dist.ProcessGroup


class _Field(NamedTuple):
    V: Tensor  # [L, N, C] combined drift V~ = sum_tau V_tau / lambda_tau, normalised units, fp32
    S: Tensor  # [] mean target distance; x~ = x * sqrt(C) / S
    lam: Tensor  # [n_tau] lambda_tau = RMS of the raw V_tau (normalised units)
    energy: Tensor  # [] energy distance (2 E|x-y| - E|x-x'| - E|y-y'|) / S, unbiased; 0 iff matched


def _world(group: ProcessGroup | None) -> tuple[int, int]:
    if group is None:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _all_reduce(t: Tensor, op: dist.ReduceOp, group: ProcessGroup | None) -> Tensor:
    if _world(group)[0] > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _all_gather_rows(t: Tensor, group: ProcessGroup | None) -> Tensor:
    """[L, n, C] local rows -> [L, W*n, C], rank-major, so global row = rank * n + local row."""
    world, _ = _world(group)
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=1)


def _check_inputs(x: Tensor, y_pos: Tensor, temperatures: Sequence[float], affinity_floor: float,
                  group: ProcessGroup | None) -> None:
    if x.dim() != 3 or y_pos.dim() != 3:
        raise ValueError(f"x and y_pos must be [L, N, C]; got {tuple(x.shape)} and {tuple(y_pos.shape)}")
    if not (x.is_floating_point() and y_pos.is_floating_point()):
        raise ValueError(f"features must be floating point; got {x.dtype} and {y_pos.dtype}")
    if x.shape[0] != y_pos.shape[0] or x.shape[2] != y_pos.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} and y_pos {tuple(y_pos.shape)} disagree on L or C")
    if 0 in x.shape or 0 in y_pos.shape:
        raise ValueError(f"empty input: x {tuple(x.shape)}, y_pos {tuple(y_pos.shape)}")
    if len(temperatures) == 0 or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be a non-empty sequence of positive floats; got {temperatures}")
    if affinity_floor < 0:
        raise ValueError(f"affinity_floor must be >= 0; got {affinity_floor}")
    world, _ = _world(group)
    if world > 1:
        # Rank-major row indexing (self-exclusion, gathers) needs the same local sizes everywhere.
        sizes = torch.tensor([x.shape[1], y_pos.shape[1]], device=x.device)
        every = [torch.empty_like(sizes) for _ in range(world)]
        dist.all_gather(every, sizes, group=group)
        if any(not torch.equal(s, sizes) for s in every):
            got = [tuple(s.tolist()) for s in every]
            raise ValueError(f"drift under DDP needs equal local (N, Np) on all ranks; got {got} per rank")


def _affinities(d: Tensor, self_mask: Tensor, scales: Sequence[float | Tensor], affinity_floor: float,
                group: ProcessGroup | None) -> list[Tensor]:
    """Doubly-normalised affinities A = sqrt(softmax_j(l) * softmax_i(l)), one [L, N, T] per scale.

    d [L, N, T] distances of local rows to all targets, self_mask [N, T] marks each x_i against its own copy;
    logits are l = -d * scale. The column softmax runs over the global i axis (all ranks).
    """
    d = d.masked_fill(self_mask, math.inf)  # self-exclusion: logit -inf, weight exactly 0
    # Column max of l is -min_i(d) * scale for every scale, so one all-reduce serves all temperatures.
    d_min = _all_reduce(d.amin(dim=-2, keepdim=True), dist.ReduceOp.MIN, group)  # [L, 1, T]
    d_min = torch.where(torch.isfinite(d_min), d_min, 0.0)  # a column of only self entries (N_global = 1)
    col_sum = torch.stack([torch.exp((d_min - d) * a).sum(dim=-2, keepdim=True) for a in scales])
    col_sum = _all_reduce(col_sum, dist.ReduceOp.SUM, group)  # [n_tau, L, 1, T]
    out = []
    for a, s in zip(scales, col_sum):
        log_row = torch.log_softmax(-d * a, dim=-1)  # [L, N, T], local
        log_col = (d_min - d) * a - s.log()  # [L, N, T], global over i
        A = torch.exp(0.5 * (log_row + log_col))
        if affinity_floor > 0:
            A = A.clamp_min(affinity_floor)
        out.append(A.masked_fill(self_mask, 0.0))  # also clears NaN of all-self columns
    return out


@torch.no_grad()
def _field(x: Tensor, y_pos: Tensor, temperatures: Sequence[float], *, tau_times_c: bool,
           affinity_floor: float, group: ProcessGroup | None) -> _Field:
    _check_inputs(x, y_pos, temperatures, affinity_floor, group)
    world, rank = _world(group)
    L, N, C = x.shape
    x, y_pos = x.float(), y_pos.float()  # bf16 softmax underflows at tau=0.02
    x_all = _all_gather_rows(x, group)  # [L, Ng, C]
    y_all = _all_gather_rows(y_pos, group)  # [L, Npg, C]
    n_pos = y_all.shape[1]
    t = torch.cat([y_all, x_all], dim=1)  # [L, T, C] targets: positives, then negatives
    # Centring is exact for distances and V (W+ and W- rows have equal sums); it keeps cdist's matmul
    # form accurate. mu comes from gathered targets, so it is the same on every rank.
    mu = t.mean(dim=1, keepdim=True)  # [L, 1, C]
    t = t - mu
    x = x - mu  # bitwise equal to this rank's rows of t

    T = t.shape[1]
    rows = torch.arange(N, device=x.device)
    self_mask = torch.zeros(N, T, dtype=torch.bool, device=x.device)
    self_mask[rows, n_pos + rank * N + rows] = True  # global row index of x_i among the negatives

    d = torch.cdist(x, t).masked_fill(self_mask, 0.0)  # [L, N, T], plain L2; exact zero diagonal
    # Positive-positive distances serve only the energy-distance statistic (a convergence signal).
    n_pos_local = y_pos.shape[1]
    rows_pos = torch.arange(n_pos_local, device=x.device)
    d_yy = torch.cdist(t[:, rank * n_pos_local:(rank + 1) * n_pos_local], t[:, :n_pos])  # [L, Np, Npg]
    d_yy[:, rows_pos, rank * n_pos_local + rows_pos] = 0.0
    sums = torch.stack([d[..., :n_pos].sum(), d[..., n_pos:].sum(), d_yy.sum()])  # xy, xx, yy
    sums = _all_reduce(sums, dist.ReduceOp.SUM, group)
    n_gen = N * world
    S = (sums[0] + sums[1]) / (L * n_gen * T)
    S = S.clamp_min(torch.finfo(torch.float32).tiny)  # all points identical: V is 0, avoid 0/0
    energy = (2 * sums[0] / (L * n_gen * n_pos) - sums[1] / (L * n_gen * (n_gen - 1))
              - sums[2] / (L * n_pos * (n_pos - 1))) / S  # nan when N_global or Np_global is 1

    # l = -d / (S tau) = -d~ / (tau sqrt(C)); the seed's ablation divides d~ by tau*C instead.
    c_eff = math.sqrt(C) if tau_times_c else 1.0
    scales = [1.0 / (S * (tau * c_eff)) for tau in temperatures]  # [] tensors: no host sync
    V_raw = []
    for A in _affinities(d, self_mask, scales, affinity_floor, group):
        A_pos, A_neg = A.split([n_pos, T - n_pos], dim=-1)  # [L, N, Npg], [L, N, Ng]
        # Cross-weighting: both sides carry the other side's mass, so the field is anti-symmetric.
        W_pos = A_pos * A_neg.sum(dim=-1, keepdim=True)
        W_neg = A_neg * A_pos.sum(dim=-1, keepdim=True)
        V_raw.append(W_pos @ t[:, :n_pos] - W_neg @ t[:, n_pos:])  # [L, N, C], feature units
    V_raw = torch.stack(V_raw) * (math.sqrt(C) / S)  # [n_tau, L, N, C], normalised units
    sq = _all_reduce(V_raw.square().sum(dim=(1, 2, 3)), dist.ReduceOp.SUM, group)
    lam = (sq / (L * N * world * C)).sqrt()  # [n_tau]
    # An all-zero field (e.g. N_global = 1) stays zero instead of 0/0.
    V = (V_raw / lam.clamp_min(1e-12)[:, None, None, None]).sum(dim=0)
    return _Field(V=V, S=S, lam=lam, energy=energy)


def compute_drift(x: Tensor, y_pos: Tensor, temperatures: Sequence[float] = (0.02, 0.05, 0.2), *,
                  tau_times_c: bool = False, affinity_floor: float = 0.0,
                  group: ProcessGroup | None = None) -> Tensor:
    """Combined drift V~ [L, N, C] (fp32, normalised units) of generated x [L, N, C] towards y_pos [L, Np, C].

    Each of the L problems has targets concat(y_pos, x); x doubles as the negatives, each x_i excluded
    against itself. S (mean distance) and lambda_tau (RMS of V_tau) are shared by the L problems.

    tau_times_c: ablation reproducing the seed's bug, logits -d~ / (tau * C) instead of -d~ / (tau * sqrt(C)).
    affinity_floor: the official code's floor, A_ij = max(A_ij, floor) for every entry but the self entry
        (which stays exactly 0), applied after the doubly-normalised A and before cross-weighting; the official
        value is 1e-3 (it clamps the softmax product at 1e-6). 0 disables it.
    group: process group; x and y_pos are then this rank's rows (equal sizes on all ranks) and every problem
        spans the global batch: same field as one process on the concatenated (rank-major) batch.
    """
    return _field(x, y_pos, temperatures, tau_times_c=tau_times_c, affinity_floor=affinity_floor, group=group).V


def drift_loss(gen_feats: Mapping[str, Tensor], pos_feats: Mapping[str, Tensor],
               temperatures: Sequence[float] = (0.02, 0.05, 0.2), *, tau_times_c: bool = False,
               affinity_floor: float = 0.0, group: ProcessGroup | None = None) -> tuple[Tensor, dict[str, float]]:
    """Summed drifting loss over feature groups, and stats.

    Per group [L, N, C]: mean((x~ - stopgrad(x~ + V~))^2) with x~ = x sqrt(C) / S, S constant; the gradient
    -2 V~ sqrt(C) / S / numel reaches gen_feats only. Under `group` the loss is the local mean, so DDP's gradient
    averaging over W ranks gives the one-process gradient of the global batch; every rank must pass the same
    keys in the same order (each group runs its own collectives).

    Stats (floats; `loss` summed over groups, `energy` and `drift_norm` averaged):
    - `energy`, `energy/<name>`: energy distance (2 E|x-y| - E|x-x'| - E|y-y'|) / S over the global batch,
      unbiased, ~0 when generated matches real and growing with any mismatch: the convergence signal
      (nan when the global batch has a single generated or positive row).
    - `drift_norm`, `drift_norm/<name>`: lambda_tau (RMS of the raw drift, normalised units) averaged over
      temperatures. Smallest near the match, but not monotone: far from the data (shift or spread mismatch)
      the small-tau kernels see only negatives and the field vanishes, so read it only near convergence.
    - `loss`, `loss/<name>`: this rank's loss; ~constant, no convergence signal.
    """
    if set(gen_feats) != set(pos_feats) or not gen_feats:
        raise ValueError(f"gen_feats and pos_feats need the same non-empty keys; got {list(gen_feats)} "
                         f"and {list(pos_feats)}")
    names = list(gen_feats)
    losses, norms, energies = [], [], []
    for name in names:
        x = gen_feats[name]  # [L, N, C]
        field = _field(x.detach(), pos_feats[name].detach(), temperatures, tau_times_c=tau_times_c,
                       affinity_floor=affinity_floor, group=group)
        x_n = x.float() * (math.sqrt(x.shape[-1]) / field.S)  # [L, N, C], S carries no gradient
        target = (x_n + field.V).detach()
        losses.append((x_n - target).square().mean())
        norms.append(field.lam.mean())
        energies.append(field.energy)
    loss = torch.stack(losses).sum()
    per_group = {"loss": torch.stack(losses).detach(), "drift_norm": torch.stack(norms),
                 "energy": torch.stack(energies)}  # each [n_groups]
    # One device sync for all stats.
    table = torch.stack(list(per_group.values())).tolist()
    stats = {"loss": sum(table[0])}
    for key, row in zip(per_group, table):
        if key != "loss":
            stats[key] = sum(row) / len(row)
        stats.update({f"{key}/{n}": v for n, v in zip(names, row)})
    return loss, stats


def validate(cfg) -> None:
    """The `drift` section's kernel keys (a config.DriftConfig; trainer.validate checks the optimisation keys)."""
    positive(cfg.positives, "drift.positives")
    require(cfg.positives % cfg.nproc_per_node == 0, "drift.positives",
            f"({cfg.positives}) must be divisible by drift.nproc_per_node ({cfg.nproc_per_node})")
    require(cfg.batch_size >= 2, "drift.batch_size", "must be >= 2: each sample is a negative for the others")
    for i, tau in enumerate(cfg.temperatures):
        positive(tau, f"drift.temperatures[{i}]")
    require(cfg.affinity_floor >= 0, "drift.affinity_floor", "must be >= 0")
