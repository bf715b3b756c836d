"""Scores from features: FID/KID equal torch-fidelity's, recognisability, bootstrap intervals, significant digits."""
import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from driftin.scores import (bootstrap_counts, fid, kernel_sums, kid, recognisability, reference_stats, scores,
                            scores_with_intervals, significant)

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussians(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32) + shift)


def test_fid_and_kid_equal_torch_fidelity():
    g, r = gaussians(300, 16, 0.2, 0), gaussians(300, 16, 0.0, 1)
    ref = reference_stats(r)
    tf_fid = fid_statistics_to_metric(fid_features_to_statistics(g), fid_features_to_statistics(r), False)
    assert fid(g, ref) == pytest.approx(tf_fid["frechet_inception_distance"], rel=1e-5)
    # With one subset as large as both sets, torch-fidelity's subset KID is the full-set unbiased MMD^2.
    tf_kid = kid_features_to_metric(g, r, kid_subset_size=300, kid_subsets=1, verbose=False)
    assert kid(kernel_sums(g, ref)) == pytest.approx(tf_kid["kernel_inception_distance_mean"], rel=1e-4)


def test_kid_with_unequal_set_sizes_is_unbiased_for_equal_distributions():
    ref = reference_stats(gaussians(900, 8, 0.0, 2))
    values = [kid(kernel_sums(gaussians(100, 8, 0.0, 10 + s), ref)) for s in range(20)]
    shifted = kid(kernel_sums(gaussians(100, 8, 0.5, 3), ref))
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(20) + 1e-9
    assert shifted > 10 * np.std(values)


def test_count_weights_equal_repeated_samples_for_fid():
    g, ref = gaussians(50, 6, 0.3, 4), reference_stats(gaussians(200, 6, 0.0, 5))
    w = torch.from_numpy(bootstrap_counts(50, 1, seed=0)[0])
    repeated = g.repeat_interleave(w, dim=0)
    assert fid(g, ref, w) == pytest.approx(fid(repeated, ref), rel=1e-9)
    assert fid(g, ref, torch.ones(50, dtype=torch.int64)) == fid(g, ref)


def test_recognisability():
    one_class = torch.tensor([[5.0, 0, 0]] * 4)  # every sample confidently class 0
    r = recognisability(one_class, labels=torch.tensor([0, 0, 1, 2]))
    assert str(r["class_entropy"]) == "0.0" and r["recognisability"] == 0.5 and r["confidence"] > 0.98
    balanced = torch.eye(3).repeat(2, 1) * 10  # (6, 3): each class twice
    assert recognisability(balanced)["class_entropy"] == pytest.approx(1.0)
    assert "recognisability" not in recognisability(balanced)  # unconditional: no requested classes
    flat = torch.zeros(6, 3)
    assert recognisability(flat)["confidence"] == pytest.approx(1 / 3)


def test_interval_brackets_the_estimate_and_matches_the_spread_of_fresh_draws():
    """The bootstrap over one set of N samples predicts how much the scores move between independent sets of N."""
    ref = reference_stats(gaussians(2000, 8, 0.0, 6))
    logits = lambda g: g[:, :4] * 3  # a fixed "classifier" of the features
    fresh = [scores(g, ref, logits(g)) for g in (gaussians(400, 8, 0.3, 100 + s) for s in range(30))]
    g = gaussians(400, 8, 0.3, 7)
    m = scores_with_intervals(g, ref, logits=logits(g), draws=200, seed=0)
    for name in ("fid", "kid", "class_entropy", "confidence"):
        assert m[f"{name}_lo"] < m[name] < m[f"{name}_hi"], name
        half_width = (m[f"{name}_hi"] - m[f"{name}_lo"]) / 2
        spread = 1.96 * np.std([f[name] for f in fresh])
        assert 0.5 < half_width / spread < 2, (name, half_width, spread)


def test_intervals_stay_in_each_scores_range():
    """Same distribution: FID ~ 0 and a uniform class histogram, where the re-centred spread would cross 0 and 1."""
    ref = reference_stats(gaussians(1000, 4, 0.0, 10))
    g = gaussians(1000, 4, 0.0, 11)
    logits = torch.eye(4).repeat(250, 1) * 5  # every class 250 times: entropy exactly 1
    m = scores_with_intervals(g, ref, logits=logits, labels=torch.arange(4).repeat(250), draws=100, seed=0)
    assert m["fid_lo"] >= 0 and m["class_entropy_hi"] <= 1 and m["recognisability_hi"] <= 1
    assert m["kid_lo"] < 0 < m["kid_hi"]  # KID is unbiased: negative values are honest


def test_intervals_are_seeded():
    g, ref = gaussians(100, 4, 0.1, 8), reference_stats(gaussians(100, 4, 0.0, 9))
    a = scores_with_intervals(g, ref, draws=20, seed=1)
    assert a == scores_with_intervals(g, ref, draws=20, seed=1)
    assert a != scores_with_intervals(g, ref, draws=20, seed=2)


def test_significant_digits_never_round_small_scores_to_zero():
    assert significant(3.14159e-7) == 3.14159e-7
    assert significant(-2.5e-9) == -2.5e-9
    assert significant(123.456789) == 123.457
