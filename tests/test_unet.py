"""The shared UNet: presets, shapes, time conditioning, initialisation, autocast and compile-ability."""

import pytest
import torch

from driftin.unet import UNET_PRESETS, UNet, UNetConfig, build_unet


pytestmark = pytest.mark.usefixtures("one_thread")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _x(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_base_preset_is_ddpm_cifar10_size():
    with torch.device("meta"):  # no allocation: counting 38M parameters must stay instant
        model = build_unet("base", 32)
    assert 35e6 <= _n_params(model) <= 40e6


def test_presets_are_ordered_by_size():
    with torch.device("meta"):
        sizes = [_n_params(build_unet(p, 32)) for p in ("tiny", "small", "base")]
    assert sizes == sorted(sizes) and sizes[0] < 2e6


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("size", [16, 32])
def test_output_shape_matches_input(preset, size):
    model = build_unet(preset, size).eval()
    out = model(_x(2, size), torch.tensor([0, 999]))
    assert out.shape == (2, 3, size, size) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_time_conditioning_changes_output_and_accepts_float_t():
    model = build_unet("tiny", 16).eval()
    x = _x(1, 16).expand(3, -1, -1, -1)
    out = model(x, torch.tensor([0, 500, 999]))  # (3, 3, 16, 16): same image, three times
    assert (out[0] - out[1]).abs().max() > 1e-3 and (out[1] - out[2]).abs().max() > 1e-3
    torch.testing.assert_close(model(x, torch.tensor([0.0, 500.0, 999.0])), out)
    assert (model(x, torch.tensor([0.5, 500.5, 999.5])) - out).abs().max() > 1e-5  # fractional t is used


def test_default_init_depends_on_input_and_zero_init_is_constant():
    x = torch.cat([_x(1, 16, seed=0), _x(1, 16, seed=1)])
    t = torch.zeros(2)
    out = build_unet("tiny", 16).eval()(x, t)
    assert (out[0] - out[1]).abs().max() > 1e-3  # a drift generator needs distinct samples from step 0
    zero = build_unet("tiny", 16, zero_init_out=True).eval()(x, t)
    assert torch.all(zero == 0)


def test_every_parameter_gets_a_gradient():
    """No dead branches: DDP without find_unused_parameters needs this."""
    model = build_unet("tiny", 16)
    model(_x(2, 16), torch.tensor([3, 7])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_module_casts_and_moves_like_any_module():
    model = build_unet("tiny", 16).eval().to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(_x(1, 16).double(), torch.tensor([5])).dtype == torch.float64


def test_dropout_is_active_in_train_mode_only():
    model = build_unet("tiny", 16, dropout=0.5)
    x, t = _x(2, 16), torch.tensor([1, 2])
    assert (model.train()(x, t) - model(x, t)).abs().max() > 1e-4
    model.eval()
    torch.testing.assert_close(model(x, t), model(x, t))


def test_bf16_autocast_runs_close_to_fp32():
    model = build_unet("tiny", 16).eval()
    x, t = _x(2, 16), torch.tensor([10, 900])
    ref = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_forward_traces_as_one_graph():
    """fullgraph=True fails on any graph break, e.g. python control flow on tensor values."""
    cfg = UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4), norm_groups=8)
    model = UNet(cfg, 8).eval()  # every code path (attention at both levels), few modules to trace
    x, t = _x(2, 8), torch.tensor([1, 2])
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t), model(x, t))


def test_build_unet_errors_name_the_problem():
    with pytest.raises(ValueError, match="'huge'"):
        build_unet("huge", 32)
    with pytest.raises(ValueError, match="halved"):
        build_unet("base", 20)  # 20 -> 10 -> 5 -> 2.5
    with pytest.raises(ValueError, match="attention resolutions"):
        build_unet("tiny", 64)  # levels 64, 32, 16: no 8x8 level
    with pytest.raises(ValueError, match="widht"):
        build_unet("tiny", 16, widht=3)
    with pytest.raises(ValueError, match="norm_groups"):
        build_unet("tiny", 16, ch=36)


def test_overrides_accept_yaml_lists_and_keep_presets_immutable():
    model = build_unet("tiny", 16, ch_mult=[1, 2], attn_resolutions=[16])
    assert model.config.ch_mult == (1, 2) and model.config.attn_resolutions == (16,)
    assert UNET_PRESETS["tiny"].ch_mult == (1, 2, 2)
    assert isinstance(UNet(UNetConfig(ch=32, ch_mult=(1, 2), attn_resolutions=(4,)), 8), UNet)
