import numpy as np
import pytest

from driftin.shapes import _SDFS, SHAPE_CLASSES, render_shapes

LUMA = np.array([0.299, 0.587, 0.114])


def test_shapes_and_dtypes():
    images, labels = render_shapes(30, image_size=16, seed=3)
    assert images.shape == (30, 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (30,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < len(SHAPE_CLASSES)


def test_ten_distinct_classes_balanced_per_chunk():
    assert len(SHAPE_CLASSES) == len(set(SHAPE_CLASSES)) == 10
    _, labels = render_shapes(200, image_size=8)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 20))


def test_same_seed_same_bytes_other_seed_differs():
    a, la = render_shapes(40, seed=7)
    b, lb = render_shapes(40, seed=7)
    c, _ = render_shapes(40, seed=8)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_sample_i_does_not_depend_on_num():
    # 150 spans two RNG chunks; its first 100 (and first 7) must equal the shorter draws.
    big, big_labels = render_shapes(150, image_size=16, seed=2)
    for n in (7, 100):
        small, small_labels = render_shapes(n, image_size=16, seed=2)
        np.testing.assert_array_equal(big[:n], small)
        np.testing.assert_array_equal(big_labels[:n], small_labels)


def test_same_shapes_at_every_resolution():
    small, small_labels = render_shapes(20, image_size=16, seed=1)
    large, large_labels = render_shapes(20, image_size=32, seed=1)
    np.testing.assert_array_equal(small_labels, large_labels)
    # Box-downsampled 32 px images resemble the 16 px render of the same sample far more than other samples.
    pooled = large.reshape(20, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    err = np.abs(pooled[:, None] - small[None].astype(float)).mean(axis=(2, 3, 4))  # (20, 20)
    np.testing.assert_array_equal(err.argmin(axis=1), np.arange(20))


def test_every_image_has_visible_contrast():
    images, _ = render_shapes(300, image_size=32, seed=4)
    luma = images.reshape(300, -1, 3) @ LUMA  # (N, H*W)
    lo, hi = np.percentile(luma, [2, 98], axis=1)
    assert (hi - lo).min() > 0.2 * 255


def test_edges_are_anti_aliased():
    # Anti-aliased edge pixels blend fg and bg, so some luma falls in the middle third between the two
    # levels; hard edges leave that band to the mild grain alone (median share 0 vs ~2.3% here).
    images, _ = render_shapes(100, image_size=32, seed=5)
    luma = images.reshape(100, -1, 3) @ LUMA  # (N, H*W)
    lo, hi = np.percentile(luma, [5, 95], axis=1, keepdims=True)
    between = (luma > lo + (hi - lo) / 3) & (luma < hi - (hi - lo) / 3)
    assert np.median(between.mean(axis=1)) > 0.01


@pytest.mark.parametrize("u", [0.0, 0.99])
def test_sdfs_are_distances_inside_the_placement_margin(u):
    g = np.linspace(-1.2, 1.2, 241, dtype=np.float32)
    py, px = np.meshgrid(g, g, indexing="ij")  # (H, W)
    radius = np.hypot(px, py)
    for name, sdf in zip(SHAPE_CLASSES, _SDFS):
        d = sdf(px[None], py[None], np.float32(u))[0]  # (H, W)
        # render_shapes keeps centres 1.05 radii from the border, so shapes must fit that disc...
        assert radius[d < 0].max() < 1.05, name
        # ...and fill a fair part of it (a sign error would fill the outside instead).
        assert 0.25 < np.mean(d[radius < 1] < 0) < 0.95, name
        # Anti-aliasing maps d to coverage over one pixel, so |grad d| must be ~1 at the edge.
        gy, gx = np.gradient(d, g[1] - g[0])
        grad = np.hypot(gx, gy)[np.abs(d) < 0.05]
        assert np.percentile(grad, 5) > 0.85 and np.percentile(grad, 95) < 1.1, name


def test_sdf_silhouettes_are_distinct():
    g = np.linspace(-1.2, 1.2, 241, dtype=np.float32)
    py, px = np.meshgrid(g, g, indexing="ij")
    masks = np.stack([sdf(px[None], py[None], np.float32(0.5))[0] < 0 for sdf in _SDFS])  # (10, H, W)
    inter = (masks[:, None] & masks[None]).sum(axis=(2, 3))
    union = (masks[:, None] | masks[None]).sum(axis=(2, 3))
    iou = inter / union
    np.fill_diagonal(iou, 0)
    assert iou.max() < 0.93  # circle vs hexagon is the closest pair (~0.9)


@pytest.mark.parametrize("kwargs", [dict(num=-1), dict(num=2, image_size=2), dict(num=2, seed=-1)])
def test_bad_arguments_raise(kwargs):
    num = kwargs.pop("num")
    with pytest.raises(ValueError):
        render_shapes(num, **kwargs)
