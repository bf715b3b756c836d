"""generators.sampler: both generators, unconditional and class-conditional (labels, DDPM guidance, drift alpha)."""

import pytest
import torch

from driftin.ddpm import ddim_nfe, ddim_sample
from driftin.generators import DRIFT_T, sampler
from driftin.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3


def _net(**conditioning) -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=8, **conditioning)
    return UNet(cfg, 8).eval().requires_grad_(False)


def _z(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _count_rows(model: torch.nn.Module, sample, *args) -> float:
    """Per-sample network evaluations of one sampler call (rows through the model / batch)."""
    rows = 0

    def hook(_, inputs):
        nonlocal rows
        rows += inputs[0].shape[0]

    handle = model.register_forward_pre_hook(hook)
    try:
        sample(*args)
    finally:
        handle.remove()
    return rows / args[0].shape[0]


def test_unconditional_drift_sampler_is_one_clamped_pass():
    model, z = _net(), _z()
    t = torch.full((3,), DRIFT_T)
    assert torch.equal(sampler("drift", model)(z), model(z, t).clamp(-1, 1))
    assert _count_rows(model, sampler("drift", model), z) == 1
    with pytest.raises(ValueError, match="unconditional"):
        sampler("drift", model)(z, torch.tensor([0, 1, 2]))


def test_conditional_drift_sampler_takes_labels_and_alpha():
    model, z = _net(num_classes=K, alpha_cond=True), _z()
    t, labels = torch.full((3,), DRIFT_T), torch.tensor([0, 1, 2])
    out = sampler("drift", model, alpha=2.0)(z, labels)
    assert torch.equal(out, model(z, t, labels, 2.0).clamp(-1, 1))
    assert _count_rows(model, sampler("drift", model, alpha=2.0), z, labels) == 1  # one step, no extrapolation
    assert (sampler("drift", model, alpha=2.0)(z, torch.tensor([2, 0, 1])) - out).abs().max() > 1e-5
    assert (sampler("drift", model, alpha=3.5)(z, labels) - out).abs().max() > 1e-5
    # No alpha: the network's default (1); no labels: the null label.
    torch.testing.assert_close(sampler("drift", model)(z, labels), sampler("drift", model, alpha=1.0)(z, labels))
    at_two = sampler("drift", model, alpha=2.0)
    torch.testing.assert_close(at_two(z), at_two(z, torch.full((3,), K)))
    with pytest.raises(ValueError, match="alpha"):
        sampler("drift", model, guidance=2.0)


def test_ddpm_sampler_with_labels_and_guidance():
    model, z = _net(num_classes=K), _z(2)
    labels = torch.tensor([0, 2])
    guided = sampler("ddpm", model, 3, guidance=2.0)
    out = guided(z, labels)
    assert torch.equal(out, ddim_sample(model, z, 3, labels=labels, guidance=2.0, null_label=K))
    assert _count_rows(model, guided, z, labels) == ddim_nfe(3, 2.0) == 6
    assert _count_rows(model, sampler("ddpm", model, 3), z, labels) == ddim_nfe(3) == 3
    assert (out - sampler("ddpm", model, 3)(z, labels)).abs().max() > 1e-5  # guidance is applied
    plain = _net()
    assert torch.equal(sampler("ddpm", plain, 3)(z), ddim_sample(plain, z, 3))  # unconditional, as before


def _factory_counter(monkeypatch) -> dict[str, int]:
    """Counts calls of torch's tensor factories (the ways a sampler could build `t`, labels or alpha per call)."""
    counts: dict[str, int] = {}
    for name in ("full", "full_like", "arange", "tensor", "as_tensor", "zeros", "ones", "empty"):
        real = getattr(torch, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, counted)
    return counts


@pytest.mark.parametrize("alpha", [None, 2.0])
def test_drift_sampler_builds_its_inputs_once_per_batch_size(monkeypatch, alpha):
    """After the first call at a batch size, a one-step call is the network alone: no tensor factory runs outside
    it, and the network receives the very same t (and alpha) tensors, so a captured graph replays unchanged."""
    seen = []

    def network(z, t, labels=None, a=None):  # a stand-in that makes no tensors: every count is the sampler's
        seen.append((t, a))
        return z

    labels = torch.tensor([0, 1, 2])
    one_step = sampler("drift", network, alpha=alpha)
    one_step(_z(), labels)
    counts = _factory_counter(monkeypatch)
    one_step(_z(seed=1), labels)
    assert counts == {}
    assert seen[1][0] is seen[0][0] and seen[1][1] is seen[0][1]
    assert torch.equal(seen[0][0], torch.full((3,), DRIFT_T))
    assert seen[0][1] is None if alpha is None else torch.equal(seen[0][1], torch.full((3,), alpha))
    one_step(_z(b=2))  # a new batch size gets its own inputs
    assert seen[2][0].shape == (2,)


def test_conditional_drift_sampler_with_cached_alpha_matches_a_number():
    """alpha passed as the cached [B] tensor gives bit-for-bit the output of passing the number."""
    model, z, labels = _net(num_classes=K, alpha_cond=True), _z(), torch.tensor([0, 1, 2])
    one_step = sampler("drift", model, alpha=2.5)
    first = one_step(z, labels)
    assert torch.equal(first, model(z, torch.full((3,), DRIFT_T), labels, 2.5).clamp(-1, 1))
    assert torch.equal(one_step(z, labels), first)
