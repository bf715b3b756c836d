"""The shared UNet: presets, shapes, time and class conditioning, initialisation, autocast and compile-ability."""

import hashlib

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


# Class conditioning (num_classes) and the drifting generator's alpha input.

def test_unconditional_state_dict_keys_are_unchanged():
    # Key names and counts of every preset as the UNet had them before class conditioning existed (sha256 of the
    # newline-joined keys): model files trained before must keep loading.
    expected = {"tiny": (166, "63c15772a4c00789"), "small": (244, "7d778f4eb5c51920"),
                "base": (304, "3d23a9a7e8ffbb67")}
    for preset, (count, digest) in expected.items():
        with torch.device("meta"):
            keys = list(build_unet(preset, 32).state_dict())
        assert (len(keys), hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]) == (count, digest), preset


def test_conditional_net_adds_only_label_and_alpha_embeddings():
    with torch.device("meta"):
        plain = set(build_unet("tiny", 16).state_dict())
        cond = build_unet("tiny", 16, num_classes=10).state_dict()
        both = build_unet("tiny", 16, num_classes=10, alpha_cond=True).state_dict()
    assert set(cond) - plain == {"label_emb.weight"} and plain <= set(cond)
    assert cond["label_emb.weight"].shape == (11, 4 * 32)  # K + 1 rows: row K is the null label
    assert set(both) - set(cond) == {"alpha_emb.weight", "alpha_emb.bias"}


def test_labels_change_the_output_and_none_is_the_null_label():
    model = build_unet("tiny", 16, num_classes=3).eval()
    assert model.null_label == 3
    x, t = _x(1, 16).expand(4, -1, -1, -1), torch.full((4,), 10)
    out = model(x, t, torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()
    for i in range(4):  # every label, the null one included, gives its own output
        for j in range(i):
            assert (out[i] - out[j]).abs().max() > 1e-4, (i, j)
    torch.testing.assert_close(model(x, t), out[3:].expand(4, -1, -1, -1))  # labels=None: the null label
    with pytest.raises(IndexError):
        model(x, t, torch.tensor([0, 1, 2, 4]))  # beyond the null label


def test_alpha_changes_the_output_and_defaults_to_one():
    model = build_unet("tiny", 16, num_classes=3, alpha_cond=True).eval()
    x, t, labels = _x(2, 16), torch.zeros(2), torch.tensor([0, 1])
    out = model(x, t, labels, alpha=torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(model(x, t, labels), out)  # alpha None means 1
    torch.testing.assert_close(model(x, t, labels, alpha=1.0), out)
    assert (model(x, t, labels, alpha=torch.tensor([1.0, 3.0])) - out)[1].abs().max() > 1e-5
    torch.testing.assert_close(model(x, t, labels, alpha=torch.tensor([1.0, 3.0]))[0], out[0])  # per sample


def test_conditioning_inputs_must_fit_the_net():
    x, t = _x(1, 16), torch.zeros(1)
    plain = build_unet("tiny", 16).eval()
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.tensor([0]))
    with pytest.raises(ValueError, match="null label"):
        plain.null_label
    with pytest.raises(ValueError, match="no alpha"):
        build_unet("tiny", 16, num_classes=2).eval()(x, t, torch.tensor([0]), alpha=2.0)
    with pytest.raises(ValueError, match="num_classes > 0"):
        build_unet("tiny", 16, alpha_cond=True)
    with pytest.raises(ValueError, match="num_classes"):
        build_unet("tiny", 16, num_classes=-1)


def test_conditional_net_trains_every_parameter_and_traces_as_one_graph():
    cfg = UNetConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=8, num_classes=3,
                     alpha_cond=True)
    model = UNet(cfg, 8)
    x, t, labels, alpha = _x(2, 8), torch.tensor([1, 2]), torch.tensor([0, 3]), torch.tensor([1.5, 3.0])
    model(x, t, labels, alpha).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    model.eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t, labels, alpha), model(x, t, labels, alpha))


def test_alpha_steers_the_untrained_net_about_as_much_as_the_label():
    """Both conditioning inputs start at one scale, as in the official code (both embeddings there at 0.02): with
    alpha 50x weaker than the label, short runs never learnt to use it (a flat alpha sweep)."""
    torch.manual_seed(0)
    model = build_unet("tiny", 16, num_classes=4, alpha_cond=True).eval()
    x, t = torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        base = model(x, t, torch.zeros(8, dtype=torch.long), alpha=1.0)
        by_label = (model(x, t, torch.ones(8, dtype=torch.long), alpha=1.0) - base).norm()
        by_alpha = (model(x, t, torch.zeros(8, dtype=torch.long), alpha=4.0) - base).norm()
    assert by_alpha > 0.2 * by_label, (float(by_alpha), float(by_label))
