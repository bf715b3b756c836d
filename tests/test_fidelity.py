"""FID/KID/precision-recall through torch-fidelity with the evaluator extractor; Inception fail-fast path."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity

from driftin import fidelity
from driftin.evaluator import images_to_tensor, load_evaluator, train_evaluator
from conftest import REPO, evaluator_params, toy_images
from driftin.fidelity import (
    INCEPTION_WEIGHTS_FILE,
    InceptionWeightsUnavailable,
    compute_fidelity,
    fidelity_from_features,
    load_reference_features,
    reference_features,
    resolve_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")



def _weights(tmp_path_factory, name: str, steps: int, seed: int) -> str:
    x, y = toy_images(400, seed=100)
    state, _ = train_evaluator(x, y, num_classes=4, device="cpu", progress=False,
                               params=evaluator_params(steps=steps, batch_size=32, lr=3e-3, seed=seed, width=16))
    path = tmp_path_factory.mktemp("evaluator") / name
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _weights(tmp_path_factory, "evaluator.pt", steps=150, seed=2)


@pytest.fixture(scope="module")
def sets():
    """Two disjoint real samples of one distribution, and uniform noise images."""
    real_a, real_b = toy_images(200, seed=1)[0], toy_images(200, seed=2)[0]
    noise = np.random.default_rng(3).integers(0, 256, real_a.shape, dtype=np.uint8)
    return real_a, real_b, noise


KW = dict(extractor="evaluator", batch_size=100, device="cpu")


@pytest.fixture(scope="module")
def scores(weights, sets):
    real_a, real_b, noise = sets
    return (compute_fidelity(real_a, real_b, weights_path=weights, **KW),
            compute_fidelity(noise, real_b, weights_path=weights, **KW))


def test_real_vs_real_near_floor_and_noise_far(scores):
    real, noise = scores
    assert set(real) == {"fid", "kid", "precision", "recall"}
    assert all(isinstance(v, float) for v in real.values())
    # Measured: real 0.74 (the finite-sample floor of 200 vs 200), noise 156.
    assert noise["fid"] > 50 * real["fid"], (real, noise)
    assert abs(real["kid"]) < 1e-2 * noise["kid"], (real, noise)
    for m in (real, noise):
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert real["precision"] > 0.8 and real["recall"] > 0.8, real
    assert noise["recall"] < 0.1, noise


def test_deterministic(weights, sets, scores):
    real_a, real_b, _ = sets
    assert compute_fidelity(real_a, real_b, weights_path=weights, **KW) == scores[0]


def test_matches_torch_fidelity_calculate_metrics(weights, sets, scores):
    class Uint8CHW(torch.utils.data.Dataset):
        def __init__(self, images):
            self.x = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, H, W)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    real_a, real_b, _ = sets
    fidelity.register_evaluator_extractor()
    m = torch_fidelity.calculate_metrics(
        input1=Uint8CHW(real_a), input2=Uint8CHW(real_b), fid=True, kid=True, prc=True, kid_subset_size=100,
        feature_extractor="driftin-evaluator", feature_extractor_weights_path=weights,
        cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    assert m["frechet_inception_distance"] == pytest.approx(scores[0]["fid"], rel=1e-4)
    # torch-fidelity averages KID over random subsets of 100: the same expectation as the full-set estimate.
    kid_std = m["kernel_inception_distance_std"]
    assert m["kernel_inception_distance_mean"] == pytest.approx(scores[0]["kid"], abs=3 * kid_std)
    assert (m["precision"], m["recall"]) == (scores[0]["precision"], scores[0]["recall"])


def test_precision_recall_orientation_on_mode_collapse():
    """Generated covers one of two reference modes: precision ~1 (all plausible), recall ~0.5 (half covered)."""
    rng = np.random.default_rng(0)
    phi_ref = np.concatenate([rng.normal(0, 1, (150, 4)), rng.normal(20, 1, (150, 4))]).astype(np.float32)
    phi_gen = rng.normal(0, 1, (150, 4)).astype(np.float32)
    m = fidelity_from_features(phi_gen, phi_ref)
    assert m["precision"] > 0.85 and 0.4 < m["recall"] < 0.6, m  # measured 0.92, 0.48; swapped roles: 0.48, 0.92
    assert m["fid"] > 100 and m["kid"] > 1, m
    same = fidelity_from_features(phi_ref[::2], phi_ref[1::2])
    # KID's cubic kernel on features of scale 20 is ~1e7 per pair: "near zero" is relative to that.
    assert same["fid"] < 1 and abs(same["kid"]) < 0.05 * m["kid"], (same, m)


def test_bad_prc_neighborhood_is_a_clear_error():
    phi = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="prc_neighborhood"):
        fidelity_from_features(phi, phi, prc_neighborhood=5)


def test_reference_features_file_gives_identical_results(weights, sets, scores, tmp_path):
    real_a, real_b, _ = sets
    path = tmp_path / "ref.npz"
    feats = reference_features(real_b, extractor="evaluator", weights_path=weights, batch_size=64, device="cpu",
                               path=str(path))
    assert feats.shape == (200, 64) and feats.dtype == np.float32
    # The uint8 NCHW path through torch-fidelity sees exactly what the evaluator saw in training.
    net = load_evaluator(torch.load(weights, weights_only=True))
    assert np.allclose(feats, net.features(images_to_tensor(real_b)).numpy(), atol=1e-5)
    loaded = load_reference_features(str(path), extractor="evaluator", weights_path=weights)
    assert compute_fidelity(real_a, loaded, weights_path=weights, **KW) == scores[0]


def test_reference_features_from_other_weights_are_rejected(weights, sets, tmp_path, tmp_path_factory):
    path = tmp_path / "ref.npz"
    reference_features(sets[1][:20], extractor="evaluator", weights_path=weights, batch_size=64, device="cpu",
                       path=str(path))
    other = _weights(tmp_path_factory, "other.pt", steps=1, seed=1)
    with pytest.raises(ValueError, match="recompute"):
        load_reference_features(str(path), extractor="evaluator", weights_path=other)


def test_cache_dir_is_used_and_reused(weights, sets, scores, tmp_path):
    real_a, real_b, _ = sets
    assert compute_fidelity(real_a, real_b, weights_path=weights, cache_dir=str(tmp_path), **KW) == scores[0]
    (cached,) = tmp_path.glob("reference-*.npz")
    # Tamper with the cached features: a second call must read them rather than recompute.
    with np.load(cached) as f:
        arrays = dict(f)
    arrays["features"] = arrays["features"] + 1.0
    np.savez(cached, **arrays)
    again = compute_fidelity(real_a, real_b, weights_path=weights, cache_dir=str(tmp_path), **KW)
    assert again["fid"] != pytest.approx(scores[0]["fid"])
    # Different reference images get their own entry.
    compute_fidelity(real_a, real_b[:150], weights_path=weights, cache_dir=str(tmp_path), **KW)
    assert len(list(tmp_path.glob("reference-*.npz"))) == 2


def test_evaluator_rejects_other_image_size(weights):
    big = np.zeros((4, 48, 48, 3), np.uint8)
    with pytest.raises(ValueError, match="trained at 32x32"):
        reference_features(big, extractor="evaluator", weights_path=weights, batch_size=4, device="cpu")


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_inception_without_weights_fails_fast(monkeypatch, tmp_path, sets):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    no_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(InceptionWeightsUnavailable) as err:
        compute_fidelity(sets[0], sets[1], extractor="inception", weights_path=None,
                         batch_size=100, device="cpu")
    assert time.monotonic() - start < 5
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and INCEPTION_WEIGHTS_FILE in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg and "evaluate.inception_weights" in msg
    assert not any(tmp_path.iterdir())  # nothing written, nothing downloaded


def test_inception_explicit_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(InceptionWeightsUnavailable, match="nope.pth"):
        resolve_weights("inception", str(missing))


def test_inception_weights_found_in_torch_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub_file = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"")
    assert resolve_weights("inception", None) == str(hub_file)


def test_unknown_extractor():
    with pytest.raises(ValueError, match="extractor must be one of"):
        resolve_weights("vgg", None)


def test_extractor_is_registered_with_torch_fidelity():
    assert torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY[fidelity.EVALUATOR_EXTRACTOR] is \
        fidelity.EvaluatorFeatureExtractor


def test_inception_url_is_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert fidelity.URL_INCEPTION_V3 == URL_INCEPTION_V3


def test_params_validation_imports_no_torch_fidelity_torchvision_or_matplotlib():
    """Every stage validates params at start-up; those imports cost ~5 s and belong to the stages that use them."""
    code = ("import sys; from driftin.config import load_params; load_params(); "
            "print(sorted(m for m in ('torch_fidelity', 'torchvision', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inception_is_downloaded_where_its_host_answers(monkeypatch, tmp_path):
    """With internet, the weights come from torch-fidelity's URL into torch.hub's cache (as its own loader does)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fidelity, "host_reachable", lambda url: None)
    fetched = []

    def fake_download(url, dst, *args, **kwargs):
        fetched.append(url)
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    hub_file = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    assert resolve_weights("inception", None) == str(hub_file)
    assert fetched == [fidelity.URL_INCEPTION_V3] and hub_file.read_bytes() == b"weights"
