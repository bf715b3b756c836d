"""Kernel drift field and loss of "Generative Modeling via Drifting" (Deng et al. 2026), all groups in one kernel.

Implements DRIFTING.md sections 1-3. A step has ~20 feature groups and hundreds of kernel problems; instead of one
sequence of small ops per group (`driftin.drift_reference`, kept as the test oracle and benchmark baseline), the
problems of every group are stacked along L by channel count C (one "bucket" per distinct C), so:
- distances and the field's matmuls are batched matmuls over a bucket's problems, in chunks of problems sized to
  stay in cache, each chunk's reductions taken while it is there;
- the affinities of all problems and temperatures are computed together, in those chunks, with no Python loop over
  groups or temperatures; the cross-weighting is folded into the affinities, so one matmul per chunk gives the
  field of all temperatures;
- the per-group constants (S, lambda, energy) are segment sums over the stacked problems, and under DDP each is one
  collective for all groups (6 per step instead of 7 per group).
Optional extra negatives with weights (the official code's unconditional negatives for class-conditional training
with guidance, DRIFTING.md sec. 6) join the targets; without them the field is exactly sec. 1's.
All kernel maths runs in fp32 without gradient (it is the stopgrad target); keep fp32 matmul precision at
"highest" (TF32 would blur near neighbours at tau=0.02).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .rules import positive, require

ProcessGroup = dist.ProcessGroup
# Target weight of the extra negatives: one number, or per group a tensor broadcastable to [L, Nu].
NegWeight = float | Tensor | Mapping[str, float | Tensor]

# Elements of one affinity chunk [l, n_tau, N, T]: the chunk's few temporaries (~4 MB each) stay in cache, and
# per-op overhead stays small (measured with `python -m driftin.bench_kernel`). The temporaries live in
# workspaces allocated once per call: on CPU a fresh multi-MB tensor page-faults on first touch, which costs
# about two passes over it.
CHUNK_ELEMENTS = 1 << 19


class _Problems(NamedTuple):
    """Feature groups stacked by channel count; bucket b holds the problems of all groups with C = C_b."""
    t: list[Tensor]  # per bucket [L_b, Np + Nu + N, C_b] this rank's targets: positives, extra negatives (Nu = 0
    # without them), generated; fp32, detached
    w: list[Tensor]  # per bucket [L_b, Nu] the extra negatives' target weights
    n: tuple[int, int, int]  # this rank's (Np, Nu, N)
    gid: Tensor  # [L] group index of every stacked problem, L = sum L_b, bucket-major
    sizes: list[int]  # L_g per group, in group-index order
    names: list[str]  # group names, in group-index order
    rows: list[tuple[int, slice]]  # per group, in group-index order: its bucket and its rows there


class _Field(NamedTuple):
    V: list[Tensor]  # per bucket [L_b, N, C_b] combined drift V~ = sum_tau V_tau / lambda_tau, normalised units
    S: Tensor  # [G] weighted mean target distance per group, sum(d w) / sum(w); x~ = x * sqrt(C) / S
    lam: Tensor  # [G, n_tau] lambda_tau = RMS of the raw V_tau (normalised units)
    energy: Tensor  # [G] energy distance (2 E|x-y| - E|x-x'| - E|y-y'|) / S_xy, unbiased; 0 iff matched


def _world(group: ProcessGroup | None) -> tuple[int, int]:
    if group is None:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _all_reduce(t: Tensor, op: dist.ReduceOp, group: ProcessGroup | None) -> Tensor:
    if _world(group)[0] > 1:
        dist.all_reduce(t, op=op, group=group)
    return t


def _all_gather_rows(ts: list[Tensor], group: ProcessGroup | None) -> list[Tensor]:
    """Each [L, n, C] local rows -> [L, W*n, C], rank-major (global row = rank * n + local row); one collective."""
    world, _ = _world(group)
    if world == 1:
        return ts
    flat = torch.cat([t.reshape(-1) for t in ts])
    parts = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(parts, flat, group=group)
    per_rank = [p.split([t.numel() for t in ts]) for p in parts]
    return [torch.cat([r[i].view(t.shape) for r in per_rank], dim=1) for i, t in enumerate(ts)]


def _segment_sum(v: Tensor, gid: Tensor, n_groups: int) -> Tensor:
    """[L, ...] per-problem values -> [G, ...] per-group sums (differentiable)."""
    return v.new_zeros(n_groups, *v.shape[1:]).index_add(0, gid, v)


def _chunk_size(per_problem: int) -> int:
    """Problems per chunk: at most CHUNK_ELEMENTS elements, at least one problem."""
    return max(1, CHUNK_ELEMENTS // per_problem)


def _chunks(rows: slice, per_problem: int) -> Iterator[slice]:
    """Consecutive slices of `rows` of _chunk_size(per_problem) problems (the last one shorter)."""
    step = _chunk_size(per_problem)
    for start in range(rows.start, rows.stop, step):
        yield slice(start, min(start + step, rows.stop))


def _cdist(a: Tensor, a_sq: Tensor, b: Tensor, b_sq: Tensor, out: Tensor) -> Tensor:
    """Plain L2 distances [L, n, m] of a [L, n, C] to b [L, m, C] into `out`, in the matmul form
    |a|^2 + |b|^2 - 2 a.b (inputs centred); a_sq [L, n], b_sq [L, m] are the squared row norms."""
    torch.baddbmm(b_sq.unsqueeze(1), a, b.transpose(1, 2), alpha=-2, out=out)
    return out.add_(a_sq.unsqueeze(2)).clamp_min_(0).sqrt_()


def _stack(gen_feats: Mapping[str, Tensor], pos_feats: Mapping[str, Tensor],
           neg_feats: Mapping[str, Tensor] | None = None, neg_weight: NegWeight = 1.0) -> _Problems:
    """Group dicts -> problems stacked by C: the one copy of the features the kernel makes, straight into the
    targets (detached; the loss takes its gradient from the group tensors themselves)."""
    by_c: dict[int, list[str]] = {}
    for name, x in gen_feats.items():
        by_c.setdefault(x.shape[-1], []).append(name)
    names = [n for bucket in by_c.values() for n in bucket]
    sizes = [gen_feats[n].shape[0] for n in names]
    device = gen_feats[names[0]].device
    gid = torch.repeat_interleave(torch.arange(len(names), device=device), torch.tensor(sizes, device=device))
    n_gen, n_pos = gen_feats[names[0]].shape[1], pos_feats[names[0]].shape[1]
    n_u = 0 if neg_feats is None else neg_feats[names[0]].shape[1]
    off = n_pos + n_u
    targets, weights, rows = [], [], []
    for b, bucket in enumerate(by_c.values()):
        length = sum(gen_feats[n].shape[0] for n in bucket)
        t = torch.empty(length, off + n_gen, gen_feats[bucket[0]].shape[-1], device=device, dtype=torch.float32)
        w = torch.empty(length, n_u, device=device, dtype=torch.float32)
        start = 0
        for n in bucket:
            r = slice(start, start + gen_feats[n].shape[0])
            start = r.stop
            rows.append((b, r))
            t[r, :n_pos] = pos_feats[n].detach()  # copy_ converts e.g. a half-precision cache to fp32
            t[r, off:] = gen_feats[n].detach()
            if n_u:
                t[r, n_pos:off] = neg_feats[n].detach()
                wn = neg_weight[n] if isinstance(neg_weight, Mapping) else neg_weight
                w[r] = torch.as_tensor(wn, dtype=torch.float32, device=device)
        targets.append(t)
        weights.append(w)
    return _Problems(t=targets, w=weights, n=(n_pos, n_u, n_gen), gid=gid, sizes=sizes, names=names, rows=rows)


def _check_negatives(gen_feats: Mapping[str, Tensor], neg_feats: Mapping[str, Tensor] | None,
                     neg_weight: NegWeight) -> int:
    """The extra negatives and their weights against the generated features; returns Nu (0 without them)."""
    if isinstance(neg_weight, Mapping) and set(neg_weight) != set(gen_feats):
        raise ValueError(f"neg_weight needs the keys of gen_feats; got {list(neg_weight)} and {list(gen_feats)}")
    if neg_feats is None:
        return 0
    if set(neg_feats) != set(gen_feats):
        raise ValueError(f"neg_feats needs the keys of gen_feats; got {list(neg_feats)} and {list(gen_feats)}")
    n_u = {u.shape[1] if u.dim() == 3 else -1 for u in neg_feats.values()}
    for name, x in gen_feats.items():
        u = neg_feats[name]
        if u.dim() != 3 or u.shape[0] != x.shape[0] or u.shape[2] != x.shape[2] or not u.is_floating_point():
            raise ValueError(f"neg_extra must be floating point [L, Nu, C] with x's L and C; got {u.dtype} "
                             f"{tuple(u.shape)} for x {tuple(x.shape)} ({name})")
        w = torch.as_tensor(neg_weight[name] if isinstance(neg_weight, Mapping) else neg_weight)
        try:
            ok = torch.broadcast_shapes(w.shape, u.shape[:2]) == u.shape[:2]
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"neg_weight of shape {tuple(w.shape)} does not broadcast to [L, Nu] = "
                             f"{tuple(u.shape[:2])} ({name})")
        if not (torch.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(f"neg_weight must be finite and >= 0 ({name})")
    if len(n_u) != 1:
        raise ValueError("all groups' extra negatives must come from one batch: the same Nu rows")
    return n_u.pop()


def _check_inputs(gen_feats: Mapping[str, Tensor], pos_feats: Mapping[str, Tensor], temperatures: Sequence[float],
                  affinity_floor: float, group: ProcessGroup | None, neg_feats: Mapping[str, Tensor] | None = None,
                  neg_weight: NegWeight = 1.0) -> None:
    if set(gen_feats) != set(pos_feats) or not gen_feats:
        raise ValueError(f"gen_feats and pos_feats need the same non-empty keys; got {list(gen_feats)} "
                         f"and {list(pos_feats)}")
    for name, x in gen_feats.items():
        y = pos_feats[name]
        if x.dim() != 3 or y.dim() != 3:
            raise ValueError(f"x and y_pos must be [L, N, C]; got {tuple(x.shape)} and {tuple(y.shape)} ({name})")
        if not (x.is_floating_point() and y.is_floating_point()):
            raise ValueError(f"features must be floating point; got {x.dtype} and {y.dtype} ({name})")
        if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
            raise ValueError(f"x {tuple(x.shape)} and y_pos {tuple(y.shape)} disagree on L or C ({name})")
        if 0 in x.shape or 0 in y.shape:
            raise ValueError(f"empty input: x {tuple(x.shape)}, y_pos {tuple(y.shape)} ({name})")
    first = next(iter(gen_feats))
    N, n_pos = gen_feats[first].shape[1], pos_feats[first].shape[1]
    if any(x.shape[1] != N for x in gen_feats.values()) or any(y.shape[1] != n_pos for y in pos_feats.values()):
        raise ValueError("all groups must come from one batch: the same N generated and Np positive rows")
    if len(temperatures) == 0 or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be a non-empty sequence of positive floats; got {temperatures}")
    if affinity_floor < 0:
        raise ValueError(f"affinity_floor must be >= 0; got {affinity_floor}")
    n_u = _check_negatives(gen_feats, neg_feats, neg_weight)
    world, _ = _world(group)
    if world > 1:
        # Rank-major row indexing (self-exclusion, gathers) needs the same local sizes everywhere.
        sizes = torch.tensor([N, n_pos, n_u], device=gen_feats[first].device)
        every = [torch.empty_like(sizes) for _ in range(world)]
        dist.all_gather(every, sizes, group=group)
        if any(not torch.equal(s, sizes) for s in every):
            got = [tuple(s.tolist()) for s in every]
            raise ValueError(f"drift under DDP needs equal local (N, Np, Nu) on all ranks; got {got} per rank")


@torch.no_grad()
def _field(p: _Problems, temperatures: Sequence[float], *, tau_times_c: bool, affinity_floor: float,
           group: ProcessGroup | None) -> _Field:
    """The drift field of every stacked problem (p.t is centred in place)."""
    world, rank = _world(group)
    device = p.gid.device
    n_groups, n_tau = len(p.sizes), len(temperatures)
    n_pos_local, n_u_local, N = p.n
    n_gen, n_pos, n_u = N * world, n_pos_local * world, n_u_local * world
    off = n_pos + n_u  # first generated column: targets are [positives, extra negatives, generated]
    T, L = off + n_gen, p.gid.numel()
    # One collective for every bucket's targets and the extra negatives' weights (rank-major rows).
    n_b = len(p.t)
    gathered = _all_gather_rows(p.t + [w[..., None] for w in p.w], group)
    w_all = [w[..., 0] for w in gathered[n_b:]]  # per bucket [L_b, Nu_global]
    targets = gathered[:n_b] if world == 1 else [  # rank-major [W x (Np, Nu, N)] -> [W x Np, W x Nu, W x N]
        torch.cat([part.flatten(1, 2) for part in t.view(t.shape[0], world, -1, t.shape[-1]).split(p.n, dim=2)],
                  dim=1) for t in gathered[:n_b]]
    buckets, start = [], 0
    for t in targets:
        buckets.append(slice(start, start + t.shape[0]))
        start += t.shape[0]

    # Distances of this rank's rows to all targets, every problem in one [L, N, T] tensor, computed in chunks of
    # problems with their reductions (S's sums, the column minima) while the chunk is in cache.
    w = torch.cat(w_all)  # [L, Nu] weights of the extra negatives (gathered: the same on every rank)
    d = torch.empty(L, N, T, device=device)
    sums = torch.zeros(L, 4, device=device)  # per problem: xy, xx, yy, xu
    d_min = torch.empty(L, T, device=device)
    per_problem = max(N * T, n_pos_local * n_pos)
    d_yy_work = torch.empty(_chunk_size(per_problem) * n_pos_local * n_pos, device=device)
    for rows, t in zip(buckets, targets):  # t: [L_b, T, C] positives, then negatives (extra, generated)
        # Centring is exact for distances and V (W+ and W- rows have equal sums, weights included); it keeps
        # the matmul form accurate. mu comes from gathered targets, so it is the same on every rank.
        t -= t.mean(dim=1, keepdim=True)
        t_sq = torch.linalg.vector_norm(t, dim=-1) ** 2  # [L_b, T]
        mine = slice(off + rank * N, off + (rank + 1) * N)  # this rank's x_i are rows of t
        mine_pos = slice(rank * n_pos_local, (rank + 1) * n_pos_local)
        for r in _chunks(slice(0, rows.stop - rows.start), per_problem):
            g = slice(rows.start + r.start, rows.start + r.stop)  # the chunk's rows of d and the per-problem stats
            dr = _cdist(t[r, mine], t_sq[r, mine], t[r], t_sq[r], out=d[g])  # [l, N, T]
            self_d = dr[:, :, mine].diagonal(dim1=1, dim2=2)  # [l, N] view: x_i vs itself
            self_d.zero_()  # exact zeros: S counts the gen-gen diagonal
            sums[g, 0] = dr[..., :n_pos].sum(dim=(1, 2))
            sums[g, 1] = dr[..., off:].sum(dim=(1, 2))
            if n_u:  # weighted distances to the extra negatives
                sums[g, 3] = (dr[..., n_pos:off] * w[g, None]).sum(dim=(1, 2))
            self_d.fill_(math.inf)  # self-exclusion from here on: logit -inf, weight exactly 0
            # The column max of the logits is -min_i(d) * scale for every scale: one all-reduce serves all
            # temperatures.
            torch.amin(dr, dim=1, out=d_min[g])
            # Positive-positive distances serve only the energy-distance statistic (a convergence signal).
            d_yy = d_yy_work[:(r.stop - r.start) * n_pos_local * n_pos].view(-1, n_pos_local, n_pos)
            _cdist(t[r, mine_pos], t_sq[r, mine_pos], t[r, :n_pos], t_sq[r, :n_pos], out=d_yy)  # [l, Np, Npg]
            d_yy.diagonal(offset=rank * n_pos_local, dim1=1, dim2=2).zero_()
            sums[g, 2] = d_yy.sum(dim=(1, 2))
    sums = _all_reduce(_segment_sum(sums, p.gid, n_groups), dist.ReduceOp.SUM, group)  # [G, 4]: xy, xx, yy, xu
    w_sum = _segment_sum(w.sum(dim=1), p.gid, n_groups)  # [G] total extra-negative weight
    d_min = _all_reduce(d_min, dist.ReduceOp.MIN, group)  # [L, T]
    d_min = torch.where(torch.isfinite(d_min), d_min, 0.0)  # a column of only self entries (N_global = 1)

    size = torch.tensor(p.sizes, device=device, dtype=torch.float32)  # [G] problems per group
    tiny = torch.finfo(torch.float32).tiny
    # S = sum(d w) / sum(w) over all (x_i, target) pairs; positives and generated targets weigh 1. Without extra
    # negatives the added terms are exact zeros, so S is bit for bit the unweighted mean distance.
    S_xy = ((sums[:, 0] + sums[:, 1]) / (size * n_gen * (n_pos + n_gen))).clamp_min(tiny)  # [G]
    S = ((sums[:, 0] + sums[:, 1] + sums[:, 3]) / (size * n_gen * (n_pos + n_gen) + n_gen * w_sum)).clamp_min(tiny)
    # The energy is scaled by the unweighted S_xy: the extra negatives' weights (e.g. a guidance alpha drawn per
    # step) must not move the convergence signal.
    energy = (2 * sums[:, 0] / (size * n_gen * n_pos) - sums[:, 1] / (size * n_gen * (n_gen - 1))
              - sums[:, 2] / (size * n_pos * (n_pos - 1))) / S_xy  # nan when N_global or Np_global is 1
    C = torch.cat([torch.full((rows.stop - rows.start,), float(t.shape[-1]), device=device)
                   for rows, t in zip(buckets, targets)])  # [L] channels of each problem
    # l = -d / (S tau) = -d~ / (tau sqrt(C)); the seed's ablation divides d~ by tau*C instead.
    c_eff = C.sqrt() if tau_times_c else torch.ones_like(C)
    taus = torch.tensor(temperatures, device=device, dtype=torch.float32)
    scale = (1.0 / (S[p.gid, None] * (taus * c_eff[:, None])))[:, :, None, None]  # [L, n_tau, 1, 1]

    # Workspaces for one chunk: kernel arguments [l, N, T]; row kernel, column kernel and its square
    # [l, n_tau, N, T].
    work_problems = _chunk_size(n_tau * N * T)
    work_d = torch.empty(work_problems * N * T, device=device)
    work_row, work_col, work_sq = torch.empty(3, work_problems * n_tau * N * T, device=device)

    def col_sum_of(col: Tensor) -> Tensor:
        """[l, n_tau, 1, T] column sums of col^2 (a norm over dim 2 would be ~10x slower on CPU)."""
        return torch.mul(col, col, out=work_sq[:col.numel()].view(col.shape)).sum(dim=2, keepdim=True)

    # exp(z) as exp2(z log2(e)) with the factor folded into the scale: on CPU exp2 runs ~1.7x faster than exp
    # (measured on 2-core AVX2), and the two exponentials are the kernel's largest cost.
    half_scale2 = scale * (0.5 * math.log2(math.e))  # [L, n_tau, 1, 1]

    def sqrt_kernel(r: slice, d_ref: Tensor, work: Tensor) -> Tensor:
        """exp(scale * (d_ref - d) / 2) [l, n_tau, N, T], the square root of the softmax numerators with the
        logits shifted by their row or column max (d_ref = row or column min of d), for every temperature."""
        l = r.stop - r.start
        delta = torch.sub(d_ref, d[r], out=work_d[:l * N * T].view(l, N, T))
        return torch.mul(delta[:, None], half_scale2[r], out=work[:l * n_tau * N * T].view(l, n_tau, N, T)).exp2_()

    col_sum = None
    if world > 1:  # the column softmax runs over every rank's rows: all-reduce its sums before the field
        col_sum = torch.empty(L, n_tau, 1, T, device=device)
        for r in _chunks(slice(0, L), n_tau * N * T):
            col_sum[r] = col_sum_of(sqrt_kernel(r, d_min[r, None], work_col))
        col_sum = _all_reduce(col_sum, dist.ReduceOp.SUM, group)

    V_raw = [torch.empty(rows.stop - rows.start, n_tau * N, t.shape[-1], device=device)
             for rows, t in zip(buckets, targets)]  # per bucket [L_b, n_tau*N, C]
    sq = torch.empty(L, n_tau, device=device)  # squared norms of each problem's raw V_tau (for lambda)
    for rows, t, V_b in zip(buckets, targets, V_raw):
        for r in _chunks(rows, n_tau * N * T):
            l = r.stop - r.start
            # Doubly-normalised affinity A_ij = sqrt(P_row_ij * P_col_ij) = rs_i * B_ij for all temperatures at
            # once, with B_ij = sqrt(e_row_ij * e_col_ij) * cs_j, rs = 1 / sqrt(row sum), cs = 1 / sqrt(col sum):
            # square roots of the exponentials come from halved logits, so no pass takes a root.
            B = sqrt_kernel(r, d[r].amin(dim=-1, keepdim=True), work_row)  # [l, n_tau, N, T]
            rs = torch.linalg.vector_norm(B, dim=-1, keepdim=True).reciprocal_()  # [l, n_tau, N, 1]
            col = sqrt_kernel(r, d_min[r, None], work_col)
            inv_cs = (col_sum_of(col) if col_sum is None else col_sum[r]).rsqrt()  # [l, n_tau, 1, T]
            # Global over i; 0 * inf only in all-self columns, cleared below. (A broadcast multiply runs ~2x
            # faster than the broadcast divide on CPU.)
            B = B.mul_(col).mul_(inv_cs)
            if affinity_floor > 0:  # the floor acts on A itself: fold the row scale in first
                B = B.mul_(rs).clamp_min_(affinity_floor)
                rs = torch.ones_like(rs)
            if n_u:  # target weights scale A's columns after normalisation and floor, before cross-weighting
                B[..., n_pos:off] *= w[r, None, None]
            # Self weight exactly 0 (also clears the NaN of all-self columns, N_global = 1).
            B[..., off + rank * N:off + (rank + 1) * N].diagonal(dim1=-2, dim2=-1).zero_()
            B = B.view(l, n_tau * N, T)
            B_pos, B_neg = B[..., :n_pos], B[..., n_pos:]  # [l, n_tau*N, Npg], [l, n_tau*N, Nu + Ng]
            # Cross-weighting W+ = A+ * sum(A-), W- = A- * sum(A+), folded into B in place (with the row scale
            # rs^2 and the normalised units), so one matmul over all targets gives the field:
            # V_i = rs_i^2 (sum(B-)_i (B+ y)_i - sum(B+)_i (B- x)_i). One matmul with K = T runs ~1.2x faster
            # than one per side plus the combination (CPU).
            row_scale = rs.square().view(l, n_tau * N, 1) * (C[r].sqrt() / S[p.gid[r]])[:, None, None]
            sum_pos, sum_neg = B_pos.sum(dim=-1, keepdim=True), B_neg.sum(dim=-1, keepdim=True)
            B_pos.mul_(sum_neg.mul_(row_scale))
            B_neg.mul_(sum_pos.mul_(row_scale).neg_())
            V = torch.bmm(B, t[r.start - rows.start:r.stop - rows.start],
                          out=V_b[r.start - rows.start:r.stop - rows.start])  # [l, n_tau*N, C]
            sq[r] = V.view(l, n_tau, N * V.shape[-1]).square().sum(dim=-1)  # while V is in cache

    V_raw = [V_b.view(V_b.shape[0], n_tau, N, -1) for V_b in V_raw]  # [L_b, n_tau, N, C]
    sq = _all_reduce(_segment_sum(sq, p.gid, n_groups), dist.ReduceOp.SUM, group)  # [G, n_tau]
    C_group = _segment_sum(C, p.gid, n_groups) / size  # [G]
    lam = (sq / (size * N * world * C_group)[:, None]).sqrt()  # [G, n_tau]
    # An all-zero field (e.g. N_global = 1) stays zero instead of 0/0.
    inv_lam = 1.0 / lam.clamp_min(1e-12)
    V = [(V_b * inv_lam[p.gid[rows], :, None, None]).sum(dim=1)
         for rows, V_b in zip(buckets, V_raw)]  # sum_tau V_tau / lambda_tau, [L_b, N, C_b]
    return _Field(V=V, S=S, lam=lam, energy=energy)


def compute_drift(x: Tensor, y_pos: Tensor, temperatures: Sequence[float] = (0.02, 0.05, 0.2), *,
                  neg_extra: Tensor | None = None, neg_weight: float | Tensor = 1.0, tau_times_c: bool = False,
                  affinity_floor: float = 0.0, group: ProcessGroup | None = None) -> Tensor:
    """Combined drift V~ [L, N, C] (fp32, normalised units) of generated x [L, N, C] towards y_pos [L, Np, C].

    Each of the L problems has targets concat(y_pos, x); x doubles as the negatives, each x_i excluded
    against itself. S (mean distance) and lambda_tau (RMS of V_tau) are shared by the L problems.

    neg_extra: [L, Nu, C] extra negatives (the official code's unconditional real negatives for guidance,
        DRIFTING.md sec. 6), targets next to x, each with target weight `neg_weight` (a number, or a tensor
        broadcastable to [L, Nu], e.g. [L, 1] for one weight per problem; >= 0). Positives and generated targets
        weigh 1. S becomes the weighted mean distance sum(d w) / sum(w) over (x_i, target) pairs; the logits and
        both softmaxes are unweighted (the row softmax runs over all targets, extra negatives included); A's
        columns are then multiplied by their weights before the cross-weighting, so the extra negatives enter
        sum(A-) and repel with their weight. None (or Nu = 0) is exactly the unweighted field.

    tau_times_c: ablation reproducing the seed's bug, logits -d~ / (tau * C) instead of -d~ / (tau * sqrt(C)).
    affinity_floor: the official code's floor, A_ij = max(A_ij, floor) for every entry but the self entry
        (which stays exactly 0), applied after the doubly-normalised A and before cross-weighting; the official
        value is 1e-3 (it clamps the softmax product at 1e-6). 0 disables it.
    group: process group; x, y_pos and neg_extra (with its weights) are then this rank's rows (equal sizes on all
        ranks) and every problem spans the global batch: same field as one process on the concatenated
        (rank-major) batch. Extra negatives shared by all ranks are passed as one 1/W share per rank.
    """
    feats = {"x": x.detach()}, {"x": y_pos.detach()}
    neg = None if neg_extra is None else {"x": neg_extra.detach()}
    _check_inputs(*feats, temperatures, affinity_floor, group, neg, neg_weight)
    return _field(_stack(*feats, neg, neg_weight), temperatures, tau_times_c=tau_times_c,
                  affinity_floor=affinity_floor, group=group).V[0]


def drift_loss(gen_feats: Mapping[str, Tensor], pos_feats: Mapping[str, Tensor],
               temperatures: Sequence[float] = (0.02, 0.05, 0.2), *, neg_feats: Mapping[str, Tensor] | None = None,
               neg_weight: NegWeight = 1.0, tau_times_c: bool = False, affinity_floor: float = 0.0,
               group: ProcessGroup | None = None) -> tuple[Tensor, dict[str, float]]:
    """Summed drifting loss over feature groups, and stats. All groups must come from one batch (same N, Np, Nu).

    Per group [L, N, C]: mean((x~ - stopgrad(x~ + V~))^2) with x~ = x sqrt(C) / S, S constant; the gradient
    -2 V~ sqrt(C) / S / numel reaches gen_feats only. Under `group` the loss is the local mean, so DDP's gradient
    averaging over W ranks gives the one-process gradient of the global batch; every rank must pass the same
    keys in the same order.

    neg_feats: per group [L, Nu, C] extra negatives, weighted by `neg_weight` (one number for all groups, or per
    group a tensor broadcastable to [L, Nu]); see compute_drift. S is then the weighted mean distance.

    Stats (floats; `loss` summed over groups, `energy` and `drift_norm` averaged):
    - `energy`, `energy/<name>`: energy distance (2 E|x-y| - E|x-x'| - E|y-y'|) / S_xy over the global batch
      (S_xy: the mean distance over positives and generated only, so extra negatives leave it alone),
      unbiased, ~0 when generated matches real and growing with any mismatch: the convergence signal
      (nan when the global batch has a single generated or positive row).
    - `drift_norm`, `drift_norm/<name>`: lambda_tau (RMS of the raw drift, normalised units) averaged over
      temperatures. Smallest near the match, but not monotone: far from the data (shift or spread mismatch)
      the small-tau kernels see only negatives and the field vanishes, so read it only near convergence.
    - `loss`, `loss/<name>`: this rank's loss; ~constant, no convergence signal.
    """
    _check_inputs(gen_feats, pos_feats, temperatures, affinity_floor, group, neg_feats, neg_weight)
    p = _stack(gen_feats, pos_feats, neg_feats, neg_weight)
    field = _field(p, temperatures, tau_times_c=tau_times_c, affinity_floor=affinity_floor, group=group)
    losses = []
    for g, (name, (b, rows)) in enumerate(zip(p.names, p.rows)):
        x = gen_feats[name].float()
        x_n = x * (math.sqrt(x.shape[-1]) / field.S[g])  # [L_g, N, C], S carries no gradient
        target = (x_n + field.V[b][rows]).detach()
        losses.append((x_n - target).square().sum() / x.numel())  # the mean over the group's problems
    losses = torch.stack(losses)  # [G]
    per_group = {"loss": losses.detach(), "drift_norm": field.lam.mean(dim=1), "energy": field.energy}
    # One device sync for all stats.
    table = torch.stack(list(per_group.values())).tolist()
    stats = {"loss": sum(table[0])}
    for key, row in zip(per_group, table):
        if key != "loss":
            stats[key] = sum(row) / len(row)
        stats.update({f"{key}/{n}": v for n, v in zip(p.names, row)})
    return losses.sum(), stats


def validate(cfg) -> None:
    """The `drift` section's kernel keys (a config.DriftConfig; trainer.validate checks the optimisation keys)."""
    positive(cfg.positives, "drift.positives")
    require(cfg.positives % cfg.nproc_per_node == 0, "drift.positives",
            f"({cfg.positives}) must be divisible by drift.nproc_per_node ({cfg.nproc_per_node})")
    require(cfg.batch_size >= 2, "drift.batch_size", "must be >= 2: each sample is a negative for the others")
    for i, tau in enumerate(cfg.temperatures):
        positive(tau, f"drift.temperatures[{i}]")
    require(cfg.affinity_floor >= 0, "drift.affinity_floor", "must be >= 0")
