from pathlib import Path
import time

import pytest
import timm
import torch
import torchvision

from driftin import encoders
from driftin.encoders import WeightsUnavailable, available_encoders, build_encoder, load_dinov2
from driftin.config import ConfigError
from driftin.mae import MAEConfig, MAEEncoder

# A 2-block, 32-wide DINOv2 ViT: the production architecture (ViT-B/14) with smaller timm kwargs, so the real
# file-loading path runs in well under a second.
SMALL_VIT = dict(depth=2, embed_dim=32, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vit_small_random.pth"
    torch.manual_seed(0)
    vit = timm.create_model(encoders.DINOV2_MODEL, pretrained=False, img_size=28, num_classes=0, **SMALL_VIT)
    torch.save(vit.state_dict(), path)
    return path, vit.state_dict()


def assert_frozen_but_differentiable(encoder, size=32):
    x = (torch.rand(2, 3, size, size) * 2 - 1).requires_grad_(True)
    encoder.train()  # must not leave eval mode (ResNet BatchNorm would switch to batch statistics)
    assert not encoder.training and not any(m.training for m in encoder.modules())
    sum(m.square().mean() for m in encoder(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())


def test_registry_and_unknown_name():
    assert set(available_encoders()) == {"pixel", "mae", "resnet18", "dinov2"}
    with pytest.raises(ValueError, match="pixel, mae, resnet18, dinov2"):
        build_encoder("vgg", image_size=32)


def test_argument_checks():
    with pytest.raises(ValueError, match="mae_state"):
        build_encoder("mae", image_size=32)
    with pytest.raises(ValueError, match="resize"):
        build_encoder("pixel", image_size=32, resize=112)
    with pytest.raises(ValueError, match="weights"):
        build_encoder("pixel", image_size=32, weights="x.pth")
    with pytest.raises(WeightsUnavailable, match="does_not_exist.pth"):
        build_encoder("resnet18", image_size=32, weights="does_not_exist.pth")


def test_pixel_maps_and_gradient():
    encoder = build_encoder("pixel", image_size=32)
    x = torch.rand(2, 3, 32, 32)
    maps = encoder(x)
    assert torch.equal(maps[0], x) and tuple(maps[1].shape) == (2, 3, 16, 16)
    assert torch.allclose(maps[1][:, :, 0, 0], x[:, :, :2, :2].mean((2, 3)))
    assert_frozen_but_differentiable(encoder)


def test_mae_maps_and_gradient():
    torch.manual_seed(0)
    state = MAEEncoder(MAEConfig()).state_dict()
    encoder = build_encoder("mae", image_size=32, mae_state=state)
    shapes = [tuple(m.shape) for m in encoder(torch.zeros(2, 3, 32, 32))]
    assert shapes == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert_frozen_but_differentiable(encoder)


def test_official_feature_set_puts_the_image_first_then_the_stem_and_every_block_normalised():
    torch.manual_seed(0)
    state = MAEEncoder(MAEConfig()).state_dict()
    encoder = build_encoder("mae", image_size=32, mae_state=state, feature_set="official")
    x = torch.randn(2, 3, 32, 32)
    maps = encoder(x)
    assert torch.equal(maps[0], x)
    assert [tuple(m.shape) for m in maps[1:]] == [(2, 32, 32, 32), (2, 32, 32, 32), (2, 64, 16, 16),
                                                  (2, 128, 8, 8), (2, 256, 4, 4)]
    # The block maps are the basic set's maps after a parameter-free GroupNorm (8 groups).
    basic = build_encoder("mae", image_size=32, mae_state=state)(x)
    for official, plain in zip(maps[2:], basic):
        assert torch.allclose(official, torch.nn.functional.group_norm(plain, 8), atol=1e-5)
    assert_frozen_but_differentiable(encoder)
    pixel = build_encoder("pixel", image_size=32, feature_set="official")(x)
    assert len(pixel) == 3 and torch.equal(pixel[0], x)  # other encoders: the image, then their usual maps
    with pytest.raises(ConfigError, match="encoders.feature_set"):
        build_encoder("mae", image_size=32, mae_state=state, feature_set="offical")


def test_resnet18_loads_a_local_weights_file(resnet_file):
    path, state = resnet_file
    encoder = build_encoder("resnet18", image_size=32, weights=str(path))
    loaded = {**{f"stem.0.{k[6:]}": v for k, v in state.items() if k.startswith("conv1.")},
              **{f"stem.1.{k[4:]}": v for k, v in state.items() if k.startswith("bn1.")},
              **{f"layers.{int(k[5]) - 1}.{k[7:]}": v for k, v in state.items() if k.startswith("layer")}}
    assert encoder.state_dict().keys() == loaded.keys()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in loaded.items())
    shapes = [tuple(m.shape) for m in encoder(torch.zeros(2, 3, 32, 32))]
    assert shapes == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    assert_frozen_but_differentiable(encoder)


def test_resnet18_uses_the_torch_hub_cache(offline, resnet_file):
    path, state = resnet_file
    cached = offline / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    encoder = build_encoder("resnet18", image_size=32)
    assert torch.equal(encoder.stem[0].weight, state["conv1.weight"])


def test_resnet18_fails_fast_offline(offline):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        build_encoder("resnet18", image_size=32)
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(offline / "torch" / "hub" / "checkpoints") in message
    assert "weights" in message and isinstance(err.value, FileNotFoundError)


def test_dinov2_loads_a_local_weights_file(vit_file):
    path, state = vit_file
    encoder = load_dinov2(str(path), 28, blocks=(0, 1), **SMALL_VIT).freeze()
    assert all(torch.equal(encoder.vit.state_dict()[k], v) for k, v in state.items())
    shapes = [tuple(m.shape) for m in encoder(torch.zeros(2, 3, 32, 32))]
    assert shapes == [(2, 32, 2, 2), (2, 32, 2, 2)]
    assert_frozen_but_differentiable(encoder)


def test_dinov2_checkpoint_at_another_resolution_is_resampled(vit_file):
    path, state = vit_file  # saved for 28 px (2x2 patches + CLS); loaded for 56 px (4x4)
    encoder = load_dinov2(str(path), 56, blocks=(1,), **SMALL_VIT)
    assert tuple(encoder.vit.pos_embed.shape) == (1, 17, 32)
    assert tuple(encoder(torch.zeros(1, 3, 32, 32))[0].shape) == (1, 32, 4, 4)


def test_dinov2_uses_the_hf_cache(offline):
    snapshot = offline / "hf" / "hub" / "models--timm--vit_base_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"stub")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert encoders.dinov2_weights_file(None) == snapshot / "model.safetensors"


@pytest.mark.parametrize("hub_offline", [False, True])
def test_dinov2_fails_fast_offline(offline, monkeypatch, hub_offline):
    if hub_offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        build_encoder("dinov2", image_size=32, resize=112)
    assert time.perf_counter() - t0 < 5
    message = str(err.value)
    assert "model.safetensors" in message and str(offline / "hf" / "hub") in message and "weights" in message


def test_dinov2_is_found_where_the_offline_message_says(offline):
    """Following the error message literally (copy the file to the path it names) must work."""
    with pytest.raises(WeightsUnavailable) as err:
        encoders.dinov2_weights_file(None)
    expected = next(word for word in str(err.value).split() if word.endswith("model.safetensors"))
    Path(expected).parent.mkdir(parents=True)
    Path(expected).write_bytes(b"stub")
    assert encoders.dinov2_weights_file(None) == Path(expected)
