"""Evaluator classifier: augmentation, learning, determinism, state round trip."""

import io

import numpy as np
import pytest
import torch

from driftin.evaluator import Evaluator, EvaluatorConfig, augment, images_to_tensor, load_evaluator, train_evaluator


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convolutions: thread sync costs more than it saves (measured 14x slower with 2 threads on a busy 2-core box).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """4 classes (square, disk, horizontal bar, vertical bar), light on dark, random position: uint8 [n, s, s, 3]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:size, 0:size]  # (s, s)
    cy, cx = (rng.uniform(0.35, 0.65, (2, n)) * size)[:, :, None, None]  # (n, 1, 1) each
    dy, dx = (yy - cy) / (0.25 * size), (xx - cx) / (0.25 * size)  # (n, s, s)
    masks = np.stack([np.maximum(abs(dy), abs(dx)) < 1, np.hypot(dy, dx) < 1,
                      (abs(dy) < 0.35) & (abs(dx) < 1.2), (abs(dx) < 0.35) & (abs(dy) < 1.2)])  # (4, n, s, s)
    mask = masks[labels, np.arange(n)][..., None]  # (n, s, s, 1)
    fg, bg = rng.uniform(128, 255, (n, 1, 1, 3)), rng.uniform(0, 96, (n, 1, 1, 3))  # light shape, dark ground
    return np.where(mask, fg, bg).astype(np.uint8), labels.astype(np.int64)


def test_augment_is_seeded_and_preserves_constant_images():
    x = torch.randn(6, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    const = torch.ones(4, 3, 8, 8) * torch.tensor([0.1, -0.5, 0.9])[None, :, None, None]
    assert torch.equal(augment(const, torch.Generator().manual_seed(0)), const)


def test_augment_is_a_flip_plus_shift():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    a = augment(x, torch.Generator().manual_seed(3), pad=0)  # no room to shift: identity or mirror
    assert torch.equal(a, x) or torch.equal(a, x.flip(3))


def test_evaluator_features_shape():
    net = Evaluator(EvaluatorConfig(num_classes=5, image_size=32, width=8))
    x = images_to_tensor(toy_images(3, seed=0)[0])  # (3, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert net.features(x).shape == (3, 32) and net(x).shape == (3, 5)


@pytest.fixture(scope="module")
def trained():
    x, y = toy_images(600, seed=0)
    return train_evaluator(x, y, num_classes=4, steps=100, batch_size=32, lr=3e-3, seed=0, device="cpu", width=8,
                           val_fraction=0.2, progress=False)


def test_train_evaluator_learns_toy_shapes(trained):
    _, metrics = trained
    assert metrics["val_samples"] == 120 and metrics["steps"] == 100
    assert metrics["val_accuracy"] > 0.85, metrics  # chance is 0.25
    assert metrics["train_loss"] < 0.7, metrics  # ln 4 = 1.39 at init


def test_train_evaluator_is_deterministic():
    x, y = toy_images(64, seed=1)
    kw = dict(num_classes=4, steps=3, batch_size=8, lr=1e-3, device="cpu", width=4, progress=False)
    s1, m1 = train_evaluator(x, y, seed=5, **kw)
    s2, m2 = train_evaluator(x, y, seed=5, **kw)
    s3, _ = train_evaluator(x, y, seed=6, **kw)
    assert m1 == m2
    assert all(torch.equal(s1["model"][k], s2["model"][k]) for k in s1["model"])
    assert not all(torch.equal(s1["model"][k], s3["model"][k]) for k in s1["model"])


def test_state_round_trips_through_torch_save(trained):
    state, _ = trained
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    net = load_evaluator(torch.load(buf, weights_only=True))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, y = toy_images(200, seed=9)
    acc = (net(images_to_tensor(x)).argmax(1).numpy() == y).mean()
    assert acc > 0.85  # fresh samples: the loaded weights are the trained ones


@pytest.mark.parametrize("bad", ["labels_range", "dtype"])
def test_train_evaluator_rejects_bad_inputs(bad):
    x, y = toy_images(8, seed=0)
    if bad == "labels_range":
        y = y + 4
    else:
        x = x.astype(np.float32)
    with pytest.raises(ValueError):
        train_evaluator(x, y, num_classes=4, steps=1, batch_size=4, lr=1e-3, seed=0, device="cpu", progress=False)
