"""Class conditioning: the alpha distribution, per-class kernel problems, negative weights, the conditional drift
objective (classes, alphas and positives per class), balanced feature caches and the params rules."""
import math

import pytest
import torch

from conftest import micro_params
from driftin.conditioning import check_classes, fold_classes, negative_weight, per_problem, sample_alpha
from driftin.config import ConfigError, _build, Params, validate
from driftin.feature_cache import balanced_subset
from driftin.objectives import conditional_drift_objective
from driftin.unet import build_unet


def params_with(**sections) -> Params:
    from conftest import merge
    return _build(Params, merge(micro_params(), sections), "")


@pytest.mark.parametrize("power", [0.0, 1.0, 3.0])
def test_alpha_follows_the_power_law_on_its_range(power):
    a = sample_alpha(200_000, 1.0, 4.0, power, torch.Generator().manual_seed(0)).double()
    assert a.min() >= 1.0 and a.max() <= 4.0
    # The CDF of density a^-p on [1, 4] at a = 2, against the empirical share below 2.
    k = 1 - power
    cdf = math.log(2) / math.log(4) if abs(k) < 1e-9 else (2 ** k - 1) / (4 ** k - 1)
    assert abs(float((a < 2).double().mean()) - cdf) < 0.005


def test_alpha_range_of_one_point_is_constant():
    assert torch.equal(sample_alpha(5, 1.0, 1.0, 1.0, torch.Generator()), torch.ones(5))


def test_negative_weight_is_the_official_formula_and_zero_without_guidance():
    alpha = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(negative_weight(alpha, 8, 16), torch.tensor([0.0, 7 / 16, 3 * 7 / 16]))


def test_fold_puts_class_k_at_location_l_in_problem_l_times_k_plus_k():
    L, K, n, C = 3, 4, 2, 5
    # Row value encodes (location, class, sample): rows of one location are class-major.
    g = torch.tensor([[[l * 100 + k * 10 + i] * C for k in range(K) for i in range(n)] for l in range(L)],
                     dtype=torch.float32)  # [L, K*n, C]
    f = fold_classes({"a": g}, K)["a"]
    assert f.shape == (L * K, n, C)
    for l in range(L):
        for k in range(K):
            assert f[l * K + k, :, 0].tolist() == [l * 100 + k * 10 + i for i in range(n)]
    w = per_problem(torch.tensor([1.0, 2.0, 3.0, 4.0]), {"a": f}, K)["a"]
    assert w.shape == (L * K, 1) and w[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0] * L
    with pytest.raises(ValueError, match="do not split"):
        fold_classes({"a": g}, 3)


def test_balanced_subset_has_every_class_and_no_repeats():
    labels = torch.cat([torch.zeros(500, dtype=torch.long), torch.arange(1, 10).repeat(5)])  # class 0 dominates
    idx = balanced_subset(labels, 20, torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 20
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.min() == 2 and counts.max() == 2


def toy_encoder():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    return lambda x: [conv(x)]


def test_conditional_objective_generates_the_drawn_classes_at_their_alphas_and_uses_their_positives():
    torch.manual_seed(0)
    K, k, g, p = 5, 2, 3, 4
    enc = toy_encoder()
    real = torch.randn(40, 3, 8, 8)
    labels = torch.arange(40) % K
    maps = [m.detach().half() for m in enc(real)]
    model = build_unet("tiny", 8, num_classes=K, alpha_cond=True)
    seen = {}
    forward = model.forward

    def spy(z, t, lab=None, alpha=None):
        seen.update(labels=lab, alpha=alpha)
        return forward(z, t, lab, alpha)

    model.forward = spy
    fn = conditional_drift_objective(enc, maps, labels, num_classes=K, labels_per_step=k, batch_size=k * g,
                                     positives=k * p, negatives=3, alpha_range=(1.0, 4.0), alpha_power=1.0,
                                     image_size=8, temperatures=(0.05, 0.2), drift_kwargs={}, group=None,
                                     world_size=1, device=torch.device("cpu"))
    loss, stats = fn(model, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and 1 <= stats["alpha"] <= 4
    lab, alpha = seen["labels"], seen["alpha"]
    assert lab.shape == (k * g,) and len(set(lab.tolist())) == k  # k distinct classes, g samples each
    assert all(len(set(lab[i * g:(i + 1) * g].tolist())) == 1 for i in range(k))
    assert all(len(set(alpha[i * g:(i + 1) * g].tolist())) == 1 for i in range(k))
    loss.backward()
    assert model.label_emb.weight.grad.abs().sum() > 0  # the label reaches the loss


def test_conditional_objective_refuses_a_cache_missing_a_class():
    maps = [torch.zeros(4, 2, 4, 4).half()]
    with pytest.raises(ConfigError, match=r"no real image of class\(es\) \[2\].*encoders.cache_images"):
        conditional_drift_objective(toy_encoder(), maps, torch.tensor([0, 1, 0, 1]), num_classes=3,
                                    labels_per_step=1, batch_size=2, positives=2, negatives=1,
                                    alpha_range=(1.0, 2.0), alpha_power=1.0, image_size=4, temperatures=(0.1,),
                                    drift_kwargs={}, group=None, world_size=1, device=torch.device("cpu"))


@pytest.mark.parametrize("sections, match", [
    ({"drift": {"batch_size": 8, "conditioning": {"labels_per_step": 3}}}, "drift.batch_size.*split evenly"),
    ({"drift": {"batch_size": 8, "conditioning": {"labels_per_step": 8}}}, "at least 2 generated"),
    ({"ddpm": {"p_uncond": 0.0}, "evaluate": {"guidance": {"ddpm": 2.0}}}, "ddpm.p_uncond"),
    ({"ddpm": {"p_uncond": 1.0}}, "ddpm.p_uncond"),
    ({"evaluate": {"guidance": {"drift": 5.0}}}, "evaluate.guidance.drift"),
    ({"evaluate": {"sweep": {"drift": [1.0, 0.5]}}}, r"evaluate.sweep.drift\[1\]"),
    ({"evaluate": {"sweep": {"ddpm": [-1.0]}}}, r"evaluate.sweep.ddpm\[0\]"),
    ({"drift": {"conditioning": {"alpha_max": 0.5}}}, "alpha_max"),
])
def test_params_rules(sections, match):
    with pytest.raises(ConfigError, match=match):
        validate(params_with(**sections))


def test_unconditional_params_skip_the_batch_split_rules():
    validate(params_with(conditional=False, drift={"batch_size": 8, "conditioning": {"labels_per_step": 3}}))


def test_a_folder_of_one_class_cannot_be_conditioned_on():
    with pytest.raises(ConfigError, match="one sub-folder per class"):
        check_classes(True, ["images"], None, "data/prepared/train.npz")
    with pytest.raises(ConfigError, match="labels_per_step.*exceeds the 3 classes"):
        check_classes(True, ["a", "b", "c"], 4, "x")
    assert check_classes(False, ["images"], 4, "x") == 0
    assert check_classes(True, ["a", "b"], 2, "x") == 2


def two_colour_data(n: int = 64, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: reddish images, class 1: bluish ones (uint8 NHWC): a label a conditional model must use."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    x = torch.rand(n, size, size, 3, generator=g) * 60
    x[labels == 0, ..., 0] += 180
    x[labels == 1, ..., 2] += 180
    return x.to(torch.uint8), labels


def red_minus_blue(images: torch.Tensor) -> float:
    """images in [-1, 1], NCHW -> mean red minus mean blue."""
    return float(images[:, 0].mean() - images[:, 2].mean())


def fit(model, loss_fn, steps: int, lr: float = 3e-3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss, _ = loss_fn(model, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.usefixtures("one_thread")
def test_conditional_ddpm_learns_to_follow_the_label():
    """The whole conditional DDPM path (label dropout in the objective, CFG in DDIM) on data where the label alone
    decides the colour: sampled class 0 comes out red, class 1 blue, from the same noise."""
    from driftin.generators import sampler
    from driftin.objectives import ddpm_objective

    torch.manual_seed(0)
    images, labels = two_colour_data()
    model = build_unet("tiny", 8, num_classes=2)
    fit(model, ddpm_objective(images, 16, torch.device("cpu"), labels=labels, p_uncond=0.1), steps=150)
    z = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        draw = sampler("ddpm", model.eval(), 10, guidance=2.0)
        red, blue = draw(z, torch.zeros(16, dtype=torch.long)), draw(z, torch.ones(16, dtype=torch.long))
    assert red_minus_blue(red) > 0.3 and red_minus_blue(blue) < -0.3


@pytest.mark.usefixtures("one_thread")
def test_conditional_drifting_learns_to_follow_the_label():
    """The whole conditional drifting path (per-class problems, class positives from a labelled cache, weighted
    unconditional negatives, the label and alpha inputs) with pixel features on the same two-colour data."""
    from driftin.encoders import build_encoder
    from driftin.generators import sampler, to_float

    torch.manual_seed(0)
    images, labels = two_colour_data()
    encoder = build_encoder("pixel", image_size=8)
    maps = [m.half() for m in encoder(to_float(images))]
    model = build_unet("tiny", 8, num_classes=2, alpha_cond=True)
    fn = conditional_drift_objective(encoder, maps, labels, num_classes=2, labels_per_step=2, batch_size=16,
                                     positives=32, negatives=8, alpha_range=(1.0, 2.0), alpha_power=1.0,
                                     image_size=8, temperatures=(0.02, 0.05, 0.2), drift_kwargs={}, group=None,
                                     world_size=1, device=torch.device("cpu"))
    fit(model, fn, steps=150)
    z = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        draw = sampler("drift", model.eval(), alpha=1.0)
        red, blue = draw(z, torch.zeros(16, dtype=torch.long)), draw(z, torch.ones(16, dtype=torch.long))
    assert red_minus_blue(red) > 0.3 and red_minus_blue(blue) < -0.3
