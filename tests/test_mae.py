import numpy as np
import pytest
import torch

from driftin.encoders import build_encoder
from driftin.mae import MAEConfig, MAEEncoder, pretrain_mae, random_patch_mask

TINY = MAEConfig(widths=(8, 16), blocks=1, decoder_width=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Random colour gradients: masked patches are predictable from their neighbours."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    a, b, c = (rng.uniform(0, 1, (n, 1, 1, 3)) for _ in range(3))
    img = a + b * ramp[None, :, None, None] - c * ramp[None, None, :, None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)  # (N, H, W, 3)


def run(images, seed=0, steps=3, **kw):
    args = dict(steps=steps, batch_size=8, lr=3e-3, mask_ratio=0.5, patch_size=4, seed=seed, device="cpu",
                progress=False, config=TINY)
    return pretrain_mae(images, **{**args, **kw})


def test_same_seed_same_state_and_rng_untouched():
    images = smooth_images(32)
    rng_before = torch.get_rng_state()
    state_a, losses_a, _ = run(images)
    assert torch.equal(torch.get_rng_state(), rng_before)
    state_b, losses_b, _ = run(images)
    state_c, _, _ = run(images, seed=1)
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_loss_decreases():
    _, losses, _ = run(smooth_images(64), steps=40, batch_size=16, lr=1e-2)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_state_loads_into_build_encoder():
    state, _, _ = run(smooth_images(16), steps=1)
    assert not any(k.startswith(("lateral", "head")) for k in state)  # encoder only, no decoder
    assert MAEConfig.from_state_dict(state) == MAEConfig(widths=(8, 16), blocks=1)
    encoder = build_encoder("mae", image_size=16, mae_state=state)
    maps = encoder(torch.zeros(2, 3, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 16, 8, 8)]
    assert all(torch.equal(p, state[k]) for k, p in encoder.net.state_dict().items())


def test_heldout_reconstruction_is_scored_and_improves_with_training():
    heldout = smooth_images(16, seed=9)
    untrained = run(smooth_images(64), steps=1, heldout=heldout).heldout_loss
    trained = run(smooth_images(64), steps=40, batch_size=16, lr=1e-2, heldout=heldout).heldout_loss
    assert np.isfinite(untrained) and trained < 0.6 * untrained
    assert run(smooth_images(64), steps=1).heldout_loss is None


def test_default_architecture_maps_at_32px():
    maps = MAEEncoder(MAEConfig())(torch.zeros(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_mask_hides_whole_patches_at_the_given_ratio():
    mask = random_patch_mask(5, 4, 4, 0.75, torch.Generator().manual_seed(0))  # (5, 1, 16, 16)
    patches = mask.view(5, 4, 4, 4, 4)  # (B, gy, p, gx, p)
    per_patch = patches.amax((2, 4))
    assert torch.equal(per_patch, patches.amin((2, 4)))  # constant within each patch
    assert per_patch.sum((1, 2)).tolist() == [12.0] * 5


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        run(smooth_images(4).astype(np.float32))
    with pytest.raises(ValueError, match="patch_size"):
        run(smooth_images(4), patch_size=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        run(smooth_images(4), mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiples"):
        MAEConfig(widths=(12,))
