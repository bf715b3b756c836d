import pytest
import torch

from driftin.features import feature_groups, input_groups, location_stride


def test_keys_and_shapes_per_depth():
    maps = [torch.randn(3, 5, 8, 8), torch.randn(3, 7, 4, 4)]
    groups = feature_groups(maps)
    expected = {
        "d0.loc": (64, 3, 5), "d0.mean": (1, 3, 5), "d0.std": (1, 3, 5),
        "d0.p2.mean": (16, 3, 5), "d0.p2.std": (16, 3, 5), "d0.p4.mean": (4, 3, 5), "d0.p4.std": (4, 3, 5),
        # 4x4 map: p=4 would leave a single patch (== the global statistics), so it is skipped.
        "d1.loc": (16, 3, 7), "d1.mean": (1, 3, 7), "d1.std": (1, 3, 7),
        "d1.p2.mean": (4, 3, 7), "d1.p2.std": (4, 3, 7),
    }
    assert {k: tuple(v.shape) for k, v in groups.items()} == expected


def test_patch_sizes_that_do_not_divide_are_skipped():
    groups = feature_groups([torch.randn(2, 3, 6, 6)], patch_sizes=(2, 4, 3))
    assert sorted(k for k in groups if ".p" in k) == ["d0.p2.mean", "d0.p2.std", "d0.p3.mean", "d0.p3.std"]


def test_values_by_hand_on_a_tiny_map():
    x = torch.arange(16.0).view(1, 1, 4, 4)  # rows: 0-3, 4-7, 8-11, 12-15
    g = feature_groups([x], eps=0.0)
    assert g["d0.loc"][:, 0, 0].tolist() == list(range(16))  # row-major locations
    assert g["d0.mean"].item() == pytest.approx(7.5)
    assert g["d0.std"].item() == pytest.approx(torch.arange(16.0).std(unbiased=False).item())
    # 2x2 patches: top-left {0, 1, 4, 5}, top-right {2, 3, 6, 7}, ...; each has population std sqrt(4.25).
    assert g["d0.p2.mean"][:, 0, 0].tolist() == [2.5, 4.5, 10.5, 12.5]
    assert g["d0.p2.std"][:, 0, 0] == pytest.approx([4.25**0.5] * 4)


def test_channels_and_batch_stay_separate():
    x = torch.randn(2, 3, 4, 4)
    g = feature_groups([x])
    assert torch.equal(g["d0.loc"][5], x[:, :, 1, 1])  # location 5 = row 1, col 1; [B, C]
    assert torch.allclose(g["d0.mean"][0], x.mean((2, 3)))
    assert torch.allclose(g["d0.p2.mean"][3], x[:, :, 2:, 2:].mean((2, 3)))


def test_gradients_flow_and_std_is_safe_on_constant_maps():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    const = torch.ones(2, 4, 8, 8, requires_grad=True)
    total = sum(v.square().sum() for v in feature_groups([x, const]).values())
    total.backward()
    assert x.grad.abs().sum() > 0
    assert torch.isfinite(const.grad).all() and torch.isfinite(x.grad).all()


def test_max_locations_keeps_a_fixed_strided_grid():
    x = torch.randn(2, 3, 8, 8)
    capped = feature_groups([x], max_locations=16)
    full = feature_groups([x])
    assert torch.equal(capped["d0.loc"], full["d0.loc"].view(8, 8, 2, 3)[::2, ::2].reshape(16, 2, 3))
    assert torch.equal(capped["d0.p2.mean"], full["d0.p2.mean"])  # statistics use every location
    assert location_stride(8, 8, None) == 1
    assert location_stride(32, 32, 256) == 2 and location_stride(32, 32, 255) == 3


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="B, C, H, W"):
        feature_groups([torch.randn(2, 3, 4)])
    with pytest.raises(ValueError, match="max_locations"):
        feature_groups([torch.randn(1, 1, 4, 4)], max_locations=0)


def test_patch_std_survives_a_large_offset():
    x = 1e3 + 1e-2 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    g = feature_groups([x], eps=0.0)
    patches = x.view(2, 3, 4, 2, 4, 2).double()
    reference = patches.std((3, 5), unbiased=False).flatten(2).permute(2, 0, 1)  # [16, B, C]
    assert torch.allclose(g["d0.p2.std"].double(), reference, rtol=1e-3)


def test_input_groups_are_the_whole_image_and_each_channels_rms():
    x = torch.randn(5, 3, 4, 4)
    g = input_groups(x)
    assert g["global"].shape == (1, 5, 48) and torch.equal(g["global"][0, 2], x[2].flatten())
    assert torch.allclose(g["norm_x"][0], x.square().mean((2, 3)).sqrt(), atol=1e-5)
    m = torch.randn(5, 8, 4, 4)
    both = feature_groups([x, m], with_input=True)
    assert set(both) == {"global", "norm_x"} | set(feature_groups([m]))  # encoder maps still numbered from d0
    assert torch.equal(both["d0.loc"], feature_groups([m])["d0.loc"])
