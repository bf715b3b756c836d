"""Unit tests of the drift field and loss (DRIFTING.md sec. 1-2); the DDP form is in test_drift_ddp.py."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftin import drift, drift_reference
from driftin.drift import _field, _stack, compute_drift, drift_loss
from driftin.features import feature_groups
from driftin.mae import MAEConfig, MAEEncoder

TAUS = (0.02, 0.05, 0.2)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unit(C: int, seed: int) -> torch.Tensor:
    u = _randn(C, seed=seed)
    return u / u.norm()


def test_hand_computed_case():
    # L=1, C=1, generated x = (0, 1), one positive y = 3, tau = 1. Targets (y, x0, x1).
    a = 0.0, 1.0
    y = 3.0
    d = [[3.0, 0.0, 1.0], [2.0, 1.0, 0.0]]  # d[i][j] = |x_i - t_j|
    S = sum(map(sum, d)) / 6  # 7/6, diagonal zeros included
    k = [[math.exp(-dij / S) for dij in row] for row in d]  # exp(logit), tau = 1
    k[0][1] = k[1][2] = 0.0  # self-exclusion
    row = [[kij / sum(r) for kij in r] for r in k]
    col = [[k[i][j] / (k[0][j] + k[1][j]) for j in range(3)] for i in range(2)]
    A = [[math.sqrt(row[i][j] * col[i][j]) for j in range(3)] for i in range(2)]
    # One positive and one non-self negative per row: W+ = W- = A+ * A-, so V_i = A+ A- (y - x_other) / S.
    V = [A[0][0] * A[0][2] * (y - a[1]) / S, A[1][0] * A[1][1] * (y - a[0]) / S]
    lam = math.sqrt((V[0] ** 2 + V[1] ** 2) / 2)
    expected = torch.tensor([[[V[0] / lam], [V[1] / lam]]])

    problems = _stack({"f": torch.tensor([[[a[0]], [a[1]]]])}, {"f": torch.tensor([[[y]]])})
    field = _field(problems, (1.0,), tau_times_c=False, affinity_floor=0.0, group=None)
    torch.testing.assert_close(field.V[0], expected, atol=1e-6, rtol=1e-5)
    assert field.S.item() == pytest.approx(7 / 6)
    assert field.lam.item() == pytest.approx(lam, rel=1e-5)


def test_drift_points_towards_shifted_positives():
    L, N, C = 2, 64, 8
    delta = 1.5 * _unit(C, seed=3)
    x = _randn(L, N, C, seed=1)
    y = _randn(L, 96, C, seed=2) + delta
    V = compute_drift(x, y)  # [L, N, C]
    assert (V.mean(dim=(0, 1)) @ delta).item() > 0
    assert (V @ delta > 0).float().mean().item() > 0.9


@settings(max_examples=8, deadline=None)
@given(shift=st.floats(-5.0, 5.0), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_invariant_to_common_translation_and_scale(shift: float, scale: float, seed: int):
    x, y = _randn(2, 12, 5, seed=seed), _randn(2, 9, 5, seed=seed + 1) + 0.5
    offset = shift * _unit(5, seed + 2)
    V = compute_drift(x, y)
    V_moved = compute_drift(scale * (x + offset), scale * (y + offset))
    torch.testing.assert_close(V_moved, V, atol=2e-4, rtol=1e-3)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_permutation_equivariance(seed: int):
    x, y = _randn(2, 12, 5, seed=seed), _randn(2, 9, 5, seed=seed + 1) + 0.5
    g = torch.Generator().manual_seed(seed)
    perm_x, perm_y = torch.randperm(12, generator=g), torch.randperm(9, generator=g)
    V = compute_drift(x, y)
    torch.testing.assert_close(compute_drift(x[:, perm_x], y), V[:, perm_x], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compute_drift(x, y[:, perm_y]), V, atol=1e-5, rtol=1e-5)


@settings(max_examples=8, deadline=None)
@given(n_tau=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_each_temperature_contributes_unit_rms(n_tau: int, seed: int):
    # lambda normalisation: one temperature alone gives mean(V~^2) = 1 over all elements of the call.
    x, y = _randn(3, 10, 4, seed=seed), _randn(3, 7, 4, seed=seed + 1)
    for tau in TAUS[:n_tau]:
        assert compute_drift(x, y, (tau,)).square().mean().item() == pytest.approx(1.0, rel=1e-4)


def test_self_affinity_is_exactly_zero():
    x, y = _randn(1, 6, 3, seed=0), _randn(1, 4, 3, seed=1)
    # A single generated sample has no other negative: without self-exclusion it would drift towards y.
    assert torch.equal(compute_drift(x[:, :1], y), torch.zeros(1, 1, 3))
    # With the floor every other entry is lifted to >= floor, the self entry stays 0: same as the reference.
    for floor in (0.0, 1e-3, 1.0):
        torch.testing.assert_close(compute_drift(x, y, affinity_floor=floor),
                                   drift_reference.compute_drift(x, y, affinity_floor=floor), atol=1e-5, rtol=1e-5)


def test_affinity_floor_one_gives_uniform_kernel():
    # floor >= every affinity makes A = 1 off self: V_i ~ Np (N-1) (mean(y) - mean_{k != i} x_k).
    x, y = _randn(1, 6, 3, seed=0), _randn(1, 4, 3, seed=1)
    V = compute_drift(x, y, (0.05,), affinity_floor=1.0)[0]  # [6, 3]
    others = (x[0].sum(dim=0) - x[0]) / 5  # [6, 3] mean of the other generated samples
    expected = y[0].mean(dim=0) - others
    expected = expected / expected.square().mean().sqrt()
    torch.testing.assert_close(V, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(compute_drift(x, y, (0.05,)), V[None], atol=1e-2)


def test_bf16_inputs_use_fp32_kernel():
    # At tau = 0.02 the logits span hundreds of units: a bf16 softmax would underflow.
    x = (30 * _randn(2, 32, 16, seed=0)).bfloat16()
    y = (30 * _randn(2, 24, 16, seed=1) + 10).bfloat16()
    V = compute_drift(x, y, (0.02,))
    assert V.dtype == torch.float32 and torch.isfinite(V).all()
    torch.testing.assert_close(V, compute_drift(x.float(), y.float(), (0.02,)), atol=1e-5, rtol=1e-5)
    loss, _ = drift_loss({"f": x.requires_grad_()}, {"f": y}, (0.02,))
    loss.backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_tau_times_c_ablation_degrades_to_difference_of_means():
    # Two-cluster real data, one Gaussian blob generated: a proper kernel drifts each x_i to its near cluster.
    C = 64
    x = _randn(1, 64, C, seed=0)
    centres = 3 * _randn(2, C, seed=1)
    y = centres[torch.arange(96) % 2][None] + _randn(1, 96, C, seed=2)
    mean_diff = y.mean(dim=1) - x.mean(dim=1)  # [1, C]

    def mean_cosine(V: torch.Tensor) -> float:
        return torch.cosine_similarity(V[0], mean_diff, dim=-1).mean().item()

    cos_sqrt_c = mean_cosine(compute_drift(x, y))
    cos_c = mean_cosine(compute_drift(x, y, tau_times_c=True))
    assert cos_c > 0.98 and cos_c > cos_sqrt_c + 0.05


def test_loss_gradient_is_scaled_drift_and_reaches_generated_only():
    L, N, C = 3, 10, 6
    x = {"a": _randn(L, N, C, seed=0).requires_grad_(), "b": _randn(1, N, 2, seed=1).requires_grad_()}
    y = {"a": (_randn(L, 8, C, seed=2) + 1).requires_grad_(), "b": _randn(1, 8, 2, seed=3).requires_grad_()}
    loss, stats = drift_loss(x, y)
    loss.backward()
    total = 0.0
    for k in x:
        V = compute_drift(x[k].detach(), y[k].detach())
        xd, yd = x[k].detach(), y[k].detach()
        S = torch.cdist(xd, torch.cat([yd, xd], dim=1)).mean()  # mean distance, diagonal zeros included
        c = xd.shape[-1]
        torch.testing.assert_close(x[k].grad, -2 * V * math.sqrt(c) / S / V.numel(), atol=1e-6, rtol=1e-4)
        assert y[k].grad is None
        assert stats[f"loss/{k}"] == pytest.approx(V.square().mean().item(), rel=1e-4)
        total += stats[f"loss/{k}"]
    assert loss.item() == pytest.approx(total, rel=1e-6)  # group losses are summed
    assert set(stats) == {"loss", "drift_norm", "energy"} | {f"{s}/{k}" for s in ("loss", "drift_norm", "energy")
                                                             for k in x}


def test_convergence_signals_are_smaller_when_matched():
    L, N, C = 4, 128, 16
    x = {"f": _randn(L, N, C, seed=0)}
    same = {"f": _randn(L, N, C, seed=1)}
    shifted = {"f": same["f"] + _unit(C, seed=2)}  # one standard deviation along a random direction
    spread = {"f": 2 * same["f"]}
    _, s_same = drift_loss(x, same)
    _, s_shift = drift_loss(x, shifted)
    _, s_spread = drift_loss(x, spread)
    assert abs(s_same["energy"]) < 0.01 < s_shift["energy"] < s_spread["energy"]
    assert s_same["drift_norm"] < s_shift["drift_norm"]
    # The documented limit of drift_norm: a spread mismatch hides the positives from the sharp kernels.
    assert s_spread["drift_norm"] < s_same["drift_norm"]


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "kwargs"),
    [
        ((2, 4), (2, 4), {}),  # not [L, N, C]
        ((1, 4, 3), (2, 5, 3), {}),  # L differs
        ((1, 4, 3), (1, 5, 2), {}),  # C differs
        ((1, 0, 3), (1, 5, 3), {}),  # no generated
        ((1, 4, 3), (1, 0, 3), {}),  # no positives
        ((1, 4, 3), (1, 5, 3), {"temperatures": ()}),
        ((1, 4, 3), (1, 5, 3), {"temperatures": (0.0,)}),
        ((1, 4, 3), (1, 5, 3), {"affinity_floor": -1.0}),
    ],
)
def test_bad_inputs_raise(x_shape, y_shape, kwargs):
    with pytest.raises(ValueError):
        compute_drift(torch.zeros(x_shape), torch.zeros(y_shape), **kwargs)


def test_loss_needs_matching_groups():
    with pytest.raises(ValueError):
        drift_loss({"a": torch.zeros(1, 2, 3)}, {"b": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError):
        drift_loss({}, {})


def _default_like_groups(n_gen: int, n_pos: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Feature groups of the default run's shapes (mae encoder, 16x16; random weights), smaller batches."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = MAEEncoder(MAEConfig()).eval().requires_grad_(False)
        gen = feature_groups(encoder(torch.randn(n_gen, 3, 16, 16)))
        pos = feature_groups(encoder(0.8 * torch.randn(n_pos, 3, 16, 16) + 0.2))
    return gen, pos


def _loss_and_grads(impl, gen: dict, pos: dict, **kwargs):
    gen = {k: v.detach().clone().requires_grad_() for k, v in gen.items()}
    loss, stats = impl.drift_loss(gen, pos, TAUS, **kwargs)
    loss.backward()
    return loss, stats, {k: v.grad for k, v in gen.items()}


@pytest.mark.parametrize("kwargs", [{}, {"affinity_floor": 1e-3}, {"tau_times_c": True}])
@pytest.mark.parametrize("chunk_elements", [drift.CHUNK_ELEMENTS, 5000])
def test_batched_kernel_matches_per_group_reference(kwargs, chunk_elements, monkeypatch):
    # 22 groups in 4 channel buckets, as in the default run; a small chunk size also splits buckets into chunks
    # (one problem per chunk for the largest) with a shorter last chunk.
    monkeypatch.setattr(drift, "CHUNK_ELEMENTS", chunk_elements)
    gen, pos = _default_like_groups(12, 20)
    loss, stats, grads = _loss_and_grads(drift, gen, pos, **kwargs)
    loss_ref, stats_ref, grads_ref = _loss_and_grads(drift_reference, gen, pos, **kwargs)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    for k in grads:  # relative to the group's largest gradient entry
        torch.testing.assert_close(grads[k], grads_ref[k], atol=1e-5 * grads_ref[k].abs().max().item(), rtol=0)
    assert set(stats) == set(stats_ref)
    for k, v in stats_ref.items():
        # The energy is a difference of nearly equal means (~1 each, summed in fp32 in another order): compare
        # it to 1e-5 of those means.
        assert stats[k] == pytest.approx(v, rel=1e-5, abs=1e-5 if k.startswith("energy") else 0), k
    V_ref = drift_reference.compute_drift(gen["d0.loc"], pos["d0.loc"], TAUS, **kwargs)
    V = compute_drift(gen["d0.loc"], pos["d0.loc"], TAUS, **kwargs)
    torch.testing.assert_close(V, V_ref, atol=1e-5 * V_ref.abs().max().item(), rtol=0)


def test_groups_must_share_the_batch():
    with pytest.raises(ValueError, match="one batch"):
        drift_loss({"a": torch.zeros(1, 4, 3), "b": torch.zeros(1, 5, 3)},
                   {"a": torch.zeros(1, 6, 3), "b": torch.zeros(1, 6, 3)})


# Weighted targets: extra negatives with weights (DRIFTING.md sec. 6, the official code's guidance negatives).

def _reference_weighted_field(x, y, u, w_u, taus, affinity_floor=0.0):
    """Combined drift V~ [L, N, C] in float64, one problem and one temperature at a time, from DRIFTING.md
    sec. 1 and 6: targets [y, u, x] with weights [1, w_u, 1]; S = sum(d w) / sum(w) over the L problems; unweighted
    softmaxes; A = sqrt(row * col), floored, times the target weights; W+ = A+ sum(A-), W- = A- sum(A+);
    lambda_tau = RMS of V_tau over all problems; V~ = sum_tau V_tau / lambda_tau."""
    x, y, u, w_u = x.double(), y.double(), u.double(), w_u.double()
    L, N, C = x.shape
    n_pos, n_u = y.shape[1], u.shape[1]
    targets = [torch.cat([y[l], u[l], x[l]]) for l in range(L)]  # each [T, C]
    weights = [torch.cat([torch.ones(n_pos), w_u[l], torch.ones(N)]).double() for l in range(L)]  # each [T]
    dists = [(x[l][:, None, :] - targets[l][None, :, :]).square().sum(-1).sqrt() for l in range(L)]  # [N, T]
    S = sum((dists[l] * weights[l]).sum() for l in range(L)) / sum(N * weights[l].sum() for l in range(L))
    is_self = torch.zeros(N, n_pos + n_u + N, dtype=torch.bool)
    for i in range(N):
        is_self[i, n_pos + n_u + i] = True
    V_total = torch.zeros(L, N, C, dtype=torch.float64)
    for tau in taus:
        V = torch.zeros(L, N, C, dtype=torch.float64)
        for l in range(L):
            k = torch.exp(-dists[l] / (S * tau)).masked_fill(is_self, 0.0)  # [N, T] exp(logit), self excluded
            A = (k / k.sum(dim=1, keepdim=True) * k / k.sum(dim=0, keepdim=True)).sqrt()
            A = A.clamp_min(affinity_floor).masked_fill(is_self, 0.0) * weights[l]
            A_pos, A_neg = A[:, :n_pos], A[:, n_pos:]
            W_pos = A_pos * A_neg.sum(dim=1, keepdim=True)
            W_neg = A_neg * A_pos.sum(dim=1, keepdim=True)
            t_n = targets[l] * math.sqrt(C) / S  # normalised targets
            V[l] = W_pos @ t_n[:n_pos] - W_neg @ t_n[n_pos:]  # the x_i terms cancel: W+, W- rows have equal sums
        V_total += V / V.square().mean().sqrt()
    return V_total, S


def _weighted_case(seed: int = 0, L: int = 3, N: int = 10, n_pos: int = 8, n_u: int = 5, C: int = 6):
    x = _randn(L, N, C, seed=seed)
    y = _randn(L, n_pos, C, seed=seed + 1) + 0.8 * _unit(C, seed + 2)
    u = 1.3 * _randn(L, n_u, C, seed=seed + 3) + 0.3
    return x, y, u


@pytest.mark.parametrize("affinity_floor", [0.0, 1e-3])
@pytest.mark.parametrize("weight", ["scalar", "per_problem", "per_target", "none"])
def test_weighted_field_matches_float64_reference(weight, affinity_floor):
    x, y, u = _weighted_case()
    L, n_u = u.shape[:2]
    w = {"scalar": 2.5, "per_problem": torch.tensor([[0.0], [1.0], [6.0]]),
         "per_target": torch.rand(L, n_u, generator=torch.Generator().manual_seed(4)) * 3,
         "none": None}[weight]
    if w is None:  # no extra negatives: today's field, checked against the same independent reference
        V = compute_drift(x, y, TAUS, affinity_floor=affinity_floor)
        V_ref, _ = _reference_weighted_field(x, y, u[:, :0], torch.zeros(L, 0), TAUS, affinity_floor)
    else:
        V = compute_drift(x, y, TAUS, neg_extra=u, neg_weight=w, affinity_floor=affinity_floor)
        V_ref, _ = _reference_weighted_field(x, y, u, torch.as_tensor(w).broadcast_to(L, n_u), TAUS, affinity_floor)
    torch.testing.assert_close(V.double(), V_ref, atol=1e-5 * V_ref.abs().max().item(), rtol=1e-5)


def test_reference_agrees_with_hand_computed_case():
    # The oracle itself against test_hand_computed_case's numbers (no extra negatives, one temperature).
    x, y = torch.tensor([[[0.0], [1.0]]]), torch.tensor([[[3.0]]])
    V_ref, S = _reference_weighted_field(x, y, torch.zeros(1, 0, 1), torch.zeros(1, 0), (1.0,))
    assert S.item() == pytest.approx(7 / 6)
    problems = _stack({"f": x}, {"f": y})
    V = _field(problems, (1.0,), tau_times_c=False, affinity_floor=0.0, group=None).V[0]
    torch.testing.assert_close(V.double(), V_ref, atol=1e-6, rtol=1e-5)


def test_weighted_scale_is_the_weighted_mean_distance():
    x, y, u = _weighted_case(seed=5)
    w = torch.tensor([[0.5], [2.0], [4.0]])
    _, S_ref = _reference_weighted_field(x, y, u, w.expand(-1, u.shape[1]), TAUS)
    p = _stack({"f": x}, {"f": y}, {"f": u}, {"f": w})
    field = _field(p, TAUS, tau_times_c=False, affinity_floor=0.0, group=None)
    assert field.S.item() == pytest.approx(S_ref.item(), rel=1e-6)
    S_unweighted = _field(_stack({"f": x}, {"f": y}), TAUS, tau_times_c=False, affinity_floor=0.0, group=None).S
    assert abs(field.S.item() - S_unweighted.item()) > 1e-3  # the extra negatives really enter S


def test_no_extra_negatives_is_exactly_todays_field():
    x, y, u = _weighted_case(seed=7)
    V = compute_drift(x, y, TAUS)
    for w in (1.0, 3.0, torch.ones(3, 1)):
        assert torch.equal(compute_drift(x, y, TAUS, neg_extra=u[:, :0], neg_weight=w), V)
    gen = {"f": x.clone().requires_grad_()}
    loss, stats = drift_loss(gen, {"f": y}, TAUS)
    loss.backward()
    gen_empty = {"f": x.clone().requires_grad_()}
    loss_empty, stats_empty = drift_loss(gen_empty, {"f": y}, TAUS, neg_feats={"f": u[:, :0]}, neg_weight=2.0)
    loss_empty.backward()
    assert torch.equal(loss_empty, loss) and stats_empty == stats and torch.equal(gen_empty["f"].grad, gen["f"].grad)


def test_weighted_loss_gradient_uses_weighted_scale():
    x, y, u = _weighted_case(seed=9)
    w = torch.tensor([[1.0], [0.0], [5.0]])
    gen = {"f": x.clone().requires_grad_()}
    loss, stats = drift_loss(gen, {"f": y}, TAUS, neg_feats={"f": u}, neg_weight={"f": w})
    loss.backward()
    V_ref, S_ref = _reference_weighted_field(x, y, u, w.expand(-1, u.shape[1]), TAUS)
    expected = -2 * V_ref * math.sqrt(x.shape[-1]) / S_ref / V_ref.numel()
    torch.testing.assert_close(gen["f"].grad.double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    # The energy (convergence signal) ignores the extra negatives: same as without them.
    _, stats_plain = drift_loss({"f": x}, {"f": y}, TAUS)
    assert stats["energy"] == pytest.approx(stats_plain["energy"], rel=1e-5, abs=1e-6)


def test_heavier_extra_negatives_repel_more():
    # Extra negatives off to one side (direction e): a larger weight pushes the generated samples further from them.
    L, N, C = 2, 48, 8
    e = _unit(C, seed=11)
    x = _randn(L, N, C, seed=12)
    y = _randn(L, 64, C, seed=13) + 1.0 * _unit(C, seed=14)
    u = _randn(L, 16, C, seed=15) + 1.5 * e

    def towards_u(w: float) -> float:
        V = compute_drift(x, y, TAUS, neg_extra=u, neg_weight=w)
        return torch.cosine_similarity(V.reshape(-1, C), e[None], dim=-1).mean().item()

    cos = [towards_u(w) for w in (0.0, 1.0, 4.0)]
    assert cos[0] > cos[1] > cos[2] and cos[2] < 0


@pytest.mark.parametrize(
    ("u_shape", "weight", "match"),
    [
        ((2, 4, 3), 1.0, "L, Nu, C"),  # L differs
        ((1, 4, 2), 1.0, "L, Nu, C"),  # C differs
        ((4, 3), 1.0, "L, Nu, C"),  # not [L, Nu, C]
        ((1, 4, 3), -1.0, ">= 0"),
        ((1, 4, 3), float("inf"), ">= 0"),
        ((1, 4, 3), torch.ones(3), "broadcast"),
        ((1, 4, 3), torch.ones(2, 4), "broadcast"),
    ],
)
def test_bad_extra_negatives_raise(u_shape, weight, match):
    with pytest.raises(ValueError, match=match):
        compute_drift(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), neg_extra=torch.zeros(u_shape), neg_weight=weight)


def test_extra_negatives_need_matching_groups():
    gen = {"a": torch.zeros(1, 4, 3), "b": torch.zeros(1, 4, 2)}
    pos = {"a": torch.zeros(1, 5, 3), "b": torch.zeros(1, 5, 2)}
    with pytest.raises(ValueError, match="neg_feats"):
        drift_loss(gen, pos, neg_feats={"a": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="neg_weight"):
        drift_loss(gen, pos, neg_feats={"a": torch.zeros(1, 2, 3), "b": torch.zeros(1, 2, 2)},
                   neg_weight={"a": 1.0})
    with pytest.raises(ValueError, match="one batch"):
        drift_loss(gen, pos, neg_feats={"a": torch.zeros(1, 2, 3), "b": torch.zeros(1, 3, 2)})
