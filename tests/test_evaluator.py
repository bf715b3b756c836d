"""Evaluator classifier: augmentation, learning, determinism, state round trip."""

import io

import numpy as np
import pytest
import torch

from conftest import evaluator_params, toy_images
from driftin.evaluator import (Evaluator, EvaluatorConfig, EvaluatorParams, augment, images_to_tensor, load_evaluator,
                               per_class_accuracy, predict, split_heldout, train_evaluator)


pytestmark = pytest.mark.usefixtures("one_thread")



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
    params = evaluator_params(steps=100, batch_size=32, lr=3e-3, seed=0, width=8, warmup=10, augment_pad=4)
    return train_evaluator(x, y, num_classes=4, params=params, device="cpu", progress=False)


def test_train_evaluator_learns_toy_shapes(trained):
    state, metrics = trained
    assert metrics["steps"] == 100 and metrics["train_accuracy"] > 0.85, metrics
    assert metrics["train_loss"] < 0.7, metrics  # ln 4 = 1.39 at init
    x, y = toy_images(200, seed=9)  # fresh images
    assert np.mean(predict(load_evaluator(state), x) == y) > 0.85  # chance is 0.25


def test_train_evaluator_is_deterministic():
    x, y = toy_images(64, seed=1)
    kw = dict(num_classes=4, device="cpu", progress=False)
    small = dict(steps=3, batch_size=8, lr=1e-3, width=4)
    s1, m1 = train_evaluator(x, y, params=evaluator_params(seed=5, **small), **kw)
    s2, m2 = train_evaluator(x, y, params=evaluator_params(seed=5, **small), **kw)
    s3, _ = train_evaluator(x, y, params=evaluator_params(seed=6, **small), **kw)
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
        train_evaluator(x, y, num_classes=4, params=evaluator_params(steps=1, batch_size=4), device="cpu",
                        progress=False)


def test_split_heldout_and_per_class_accuracy():
    x, y = toy_images(50, seed=2)
    (xt, yt), (xh, yh) = split_heldout(x, y, 0.2, seed=0)
    assert len(xh) == 10 and len(xt) == 40
    assert sorted(map(bytes, np.concatenate([xt, xh]))) == sorted(map(bytes, x))  # a partition of the images
    acc = per_class_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ("a", "b", "c"))
    assert acc["a"] == 0.5 and acc["b"] == 1.0 and np.isnan(acc["c"])


@pytest.mark.parametrize("key, value", [("steps", 0), ("steps", 2.5), ("heldout_fraction", 1.0), ("lr", True)])
def test_params_name_the_bad_key(key, value):
    raw = {**evaluator_params().__dict__, key: value}
    with pytest.raises(ValueError, match=f"evaluator.{key}"):
        EvaluatorParams.from_mapping(raw)
    with pytest.raises(ValueError, match="unknown keys \\['stpes'\\]"):
        EvaluatorParams.from_mapping({**evaluator_params().__dict__, "stpes": 3})
