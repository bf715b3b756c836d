"""DDPM maths: schedule, forward process, loss, and DDIM cross-checked against diffusers' DDIMScheduler;
class labels: label dropout and classifier-free guidance."""

import pytest
import torch
from diffusers import DDIMScheduler

from driftin.ddpm import (alphas_cumprod, ddim_nfe, ddim_sample, ddim_timesteps, ddpm_loss, drop_labels,
                          linear_betas, q_sample)

T = 1000


def _scheduler(**kw) -> DDIMScheduler:
    """Independent reference: the DDIM configuration our sampler promises to reproduce."""
    cfg = dict(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", prediction_type="epsilon",
    )
    return DDIMScheduler(**{**cfg, **kw})


def _fake_eps(shape: tuple[int, ...]):
    """Fixed random linear map of x plus a function of t: deterministic, and far from the true noise so that
    predicted x_0 leaves [-1, 1] and clipping triggers."""
    g = torch.Generator().manual_seed(1)
    # Elementwise weights on x and two permutations of it (no matmul: tiny BLAS calls thrash a loaded CPU).
    A, B, b = torch.randn(3, *shape[1:], generator=g, dtype=torch.float64)  # 3 x (C, H, W)
    calls = []

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t.clone())
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        lin = A * x + B * x.roll(1, dims=-1).flip(1)  # (B, C, H, W)
        return 0.8 * lin + torch.cos(t.double() / 150.0)[:, None, None, None] * b

    return eps_model, calls


def _reference(eps_model, x_T, num_steps, eta=0.0, generator=None, clip=True):
    sched = _scheduler(clip_sample=clip)
    sched.set_timesteps(num_steps)
    x = x_T
    for t in sched.timesteps:
        eps = eps_model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        x = sched.step(eps, int(t), x, eta=eta, generator=generator).prev_sample
    return x


def test_linear_schedule_matches_ddpm_paper_and_diffusers():
    betas = linear_betas()
    assert betas.shape == (T,) and betas[0] == 1e-4 and abs(betas[-1].item() - 0.02) < 1e-15
    ab = alphas_cumprod(betas)
    assert torch.all(ab[1:] < ab[:-1]) and abs(ab[0].item() - (1 - 1e-4)) < 1e-15
    assert torch.allclose(ab, _scheduler().alphas_cumprod.double(), rtol=1e-5, atol=1e-9)


def test_ddim_timesteps_50_steps_is_980_to_0_by_20():
    assert ddim_timesteps(50).tolist() == list(range(980, -1, -20))
    assert ddim_timesteps(1).tolist() == [0]
    sched = _scheduler()
    for n in (7, 50, 333):  # 7 and 333 do not divide 1000: floored stride, as diffusers' "leading" spacing
        sched.set_timesteps(n)
        assert ddim_timesteps(n).tolist() == sched.timesteps.tolist()


@pytest.mark.parametrize("num_steps", [0, -3, T + 1])
def test_ddim_rejects_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(lambda x, t: x, torch.zeros(1, 3, 2, 2), num_steps=num_steps)


def test_ddim_rejects_eta_outside_unit_interval():
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda x, t: x, torch.zeros(1, 3, 2, 2), num_steps=2, eta=1.5)


@pytest.mark.parametrize("num_steps", [50, 10, 7, 1])
def test_ddim_eta0_matches_diffusers(num_steps):
    shape = (3, 3, 4, 4)
    eps_model, calls = _fake_eps(shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Our schedule is float64, diffusers' float32: feed diffusers' alpha_bar so only the sampler is compared.
    ours = ddim_sample(eps_model, x_T, num_steps, alpha_bar=_scheduler().alphas_cumprod.double())
    assert [int(c[0]) for c in calls] == ddim_timesteps(num_steps).tolist()
    ref = _reference(eps_model, x_T, num_steps)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # The fake model must actually exercise clipping, else this test would not pin it down.
    assert (ref - _reference(eps_model, x_T, num_steps, clip=False)).abs().max() > 1e-2


def test_ddim_default_schedule_is_linear_1000():
    shape = (2, 3, 4, 4)
    eps_model, _ = _fake_eps(shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Looser: diffusers' schedule is float32, and 1/sqrt(alpha_bar_980) ~ 160 amplifies its rounding.
    torch.testing.assert_close(ddim_sample(eps_model, x_T, 10), _reference(eps_model, x_T, 10), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_positive_matches_diffusers_with_shared_noise(eta):
    """Both draw one randn(x.shape) per step from the generator, so equal seeds give identical noise."""
    shape = (3, 3, 4, 4)
    eps_model, _ = _fake_eps(shape)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = _scheduler().alphas_cumprod.double()
    ours = ddim_sample(eps_model, x_T, 10, eta, alpha_bar=ab, generator=torch.Generator().manual_seed(5))
    ref = _reference(eps_model, x_T, 10, eta, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    other = ddim_sample(eps_model, x_T, 10, eta, alpha_bar=ab, generator=torch.Generator().manual_seed(6))
    assert (ours - other).abs().max() > 1e-3  # the noise is really injected


def test_ddim_builds_no_graph():
    w = torch.ones((), requires_grad=True)
    out = ddim_sample(lambda x, t: w * x, torch.randn(2, 3, 4, 4), num_steps=3)
    assert not out.requires_grad and out.grad_fn is None


def test_q_sample_statistics():
    ab = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(0)
    n = 20000
    t = torch.full((n,), 300, dtype=torch.long)
    x0 = torch.full((n, 1, 1, 1), 0.7)
    x_t = q_sample(x0, t, torch.randn(n, 1, 1, 1, generator=g), ab)
    a = ab[300].item()
    assert abs(x_t.mean().item() - a**0.5 * 0.7) < 0.03
    assert abs(x_t.std().item() - (1 - a) ** 0.5) < 0.03
    # Noise-free: exactly the scaled data, per-sample timesteps respected.
    t2 = torch.tensor([0, 999])
    x = q_sample(torch.ones(2, 3, 2, 2), t2, torch.zeros(2, 3, 2, 2), ab)
    torch.testing.assert_close(x[:, 0, 0, 0], ab[t2].sqrt().float())


def test_ddpm_loss_zero_for_oracle_and_positive_for_wrong_model():
    ab = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])

    def oracle(x_t, tt):  # inverts q_sample from x_t alone, knowing x0
        a = ab[tt].float().view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    loss = ddpm_loss(oracle, x0, t, noise, ab)
    assert loss.shape == (4,) and loss.max() < 1e-6
    wrong = ddpm_loss(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise, ab)
    torch.testing.assert_close(wrong, noise.square().flatten(1).mean(1))
    assert wrong.min() > 0.5


# Class labels: label dropout in the loss, classifier-free guidance in the sampler.

K = 3  # classes of the toy models; label K is the null label


def test_drop_labels_rate_and_determinism():
    labels = torch.arange(20000) % K
    dropped = drop_labels(labels, 0.3, K, torch.Generator().manual_seed(0))
    is_null = dropped == K
    assert abs(is_null.float().mean().item() - 0.3) < 0.02
    assert torch.equal(dropped[~is_null], labels[~is_null])  # the others keep their label
    assert torch.equal(drop_labels(labels, 0.3, K, torch.Generator().manual_seed(0)), dropped)
    assert not torch.equal(drop_labels(labels, 0.3, K, torch.Generator().manual_seed(1)), dropped)
    torch.manual_seed(5)  # no generator: the default RNG of the labels' device, seeded as usual
    first = drop_labels(labels, 0.3, K)
    torch.manual_seed(5)
    assert torch.equal(drop_labels(labels, 0.3, K), first)
    assert torch.equal(drop_labels(labels, 0.0, K), labels) and torch.all(drop_labels(labels, 1.0, K) == K)
    with pytest.raises(ValueError, match="p_uncond"):
        drop_labels(labels, 1.5, K)


def test_ddpm_loss_passes_dropped_labels_to_the_model():
    ab = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(64, 3, 2, 2, generator=g), torch.randn(64, 3, 2, 2, generator=g)
    t, labels = torch.full((64,), 100), torch.arange(64) % K
    seen = []

    def model(x_t, tt, *args):
        seen.append(args)
        return torch.zeros_like(x_t)

    plain = ddpm_loss(model, x0, t, noise, ab)
    assert seen.pop() == ()  # no labels: the unconditional call, as before
    torch.testing.assert_close(ddpm_loss(model, x0, t, noise, ab, labels=labels), plain)
    assert torch.equal(seen.pop()[0], labels)
    ddpm_loss(model, x0, t, noise, ab, labels=labels, p_uncond=0.5, null_label=K,
              generator=torch.Generator().manual_seed(3))
    assert torch.equal(seen.pop()[0], drop_labels(labels, 0.5, K, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="null_label"):
        ddpm_loss(model, x0, t, noise, ab, labels=labels, p_uncond=0.5)
    with pytest.raises(ValueError, match="needs labels"):
        ddpm_loss(model, x0, t, noise, ab, p_uncond=0.5, null_label=K)


def _toy_conditional(shape: tuple[int, ...]):
    """eps model whose x_0 prediction is exactly delta[label] (0 for the null label), at every x and t: guided
    DDIM then ends at guidance * delta[label] (while inside the [-1, 1] clip)."""
    ab = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(2)
    delta = 0.3 * torch.randn(K + 1, *shape[1:], generator=g, dtype=torch.float64).tanh()  # |3 delta| < 1
    delta[K] = 0.0

    def eps_model(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * delta[labels]) / (1 - a).sqrt()

    return eps_model, delta


class _Counter:
    """Wraps a model; counts its calls and the rows (per-sample network evaluations) it ran."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.rows = model, 0, 0

    def __call__(self, x, t, *args):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x, t, *args)


@pytest.mark.parametrize("guidance", [1.0, 0.0, 3.0])
def test_network_evaluations_match_ddim_nfe(guidance):
    shape, steps = (4, 3, 2, 2), 7
    eps_model, _ = _toy_conditional(shape)
    counted = _Counter(eps_model)
    ddim_sample(counted, torch.randn(shape, dtype=torch.float64), steps, labels=torch.tensor([0, 1, 2, 0]),
                guidance=guidance, null_label=K)
    assert counted.rows / shape[0] == ddim_nfe(steps, guidance) == (steps if guidance == 1.0 else 2 * steps)
    assert counted.calls == steps  # guidance runs the conditional and unconditional rows as one call
    unconditional = _Counter(lambda x, t: torch.zeros_like(x))
    ddim_sample(unconditional, torch.randn(shape), steps)
    assert unconditional.rows / shape[0] == ddim_nfe(steps) == steps


def test_guidance_one_is_exactly_the_conditional_sampler():
    shape = (4, 3, 2, 2)
    eps_model, _ = _toy_conditional(shape)
    labels = torch.tensor([0, 1, 2, 3])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    conditional = ddim_sample(lambda x, t: eps_model(x, t, labels), x_T, 10, 0.5,
                              generator=torch.Generator().manual_seed(1))
    guided = ddim_sample(eps_model, x_T, 10, 0.5, generator=torch.Generator().manual_seed(1), labels=labels,
                         guidance=1.0)
    assert torch.equal(guided, conditional)


def test_guidance_extrapolates_towards_the_conditional_direction():
    shape = (6, 3, 2, 2)
    eps_model, delta = _toy_conditional(shape)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for guidance in (0.0, 1.0, 2.0, 3.0):  # 0: the unconditional model alone
        out = ddim_sample(eps_model, x_T, 20, labels=labels, guidance=guidance, null_label=K)
        torch.testing.assert_close(out, guidance * delta[labels], atol=1e-6, rtol=1e-6)


def test_guidance_needs_labels_and_null_label():
    eps_model, _ = _toy_conditional((1, 3, 2, 2))
    with pytest.raises(ValueError, match="needs labels"):
        ddim_sample(lambda x, t: x, torch.zeros(1, 3, 2, 2), 2, guidance=2.0)
    with pytest.raises(ValueError, match="null_label"):
        ddim_sample(eps_model, torch.zeros(1, 3, 2, 2, dtype=torch.float64), 2, labels=torch.tensor([0]),
                    guidance=2.0)
