import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from driftin import datasets
from driftin.datasets import DATASET_NAMES, Dataset, DatasetUnavailable, load_cifar10, load_dataset
from driftin.shapes import SHAPE_CLASSES

CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load(name, **kwargs):
    args = dict(split="train", image_size=16, root="unused", num_samples=20, seed=0, download=False)
    return load_dataset(name, **{**args, **kwargs})


# --- shapes ------------------------------------------------------------------------------------------------


def test_shapes_train_and_test_are_disjoint_and_deterministic():
    train, test = _load("shapes", split="train"), _load("shapes", split="test")
    assert isinstance(train, Dataset) and train.class_names == SHAPE_CLASSES
    assert train.images.shape == (20, 16, 16, 3) and train.labels.dtype == np.int64
    assert train.images.tobytes() == _load("shapes", split="train").images.tobytes()
    flat_train, flat_test = train.images.reshape(20, -1), test.images.reshape(20, -1)
    assert not (flat_train[:, None] == flat_test[None]).all(axis=2).any()  # no image in both splits
    assert not np.array_equal(_load("shapes", seed=1).images, train.images)


def test_shapes_needs_num_samples():
    with pytest.raises(ValueError, match="num_samples"):
        _load("shapes", num_samples=None)


def test_unknown_name_and_split_list_the_valid_ones():
    with pytest.raises(ValueError) as err:
        _load("imagenet")
    assert all(name in str(err.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="train, test"):
        _load("shapes", split="val")


# --- cifar10 -----------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as the original CIFAR-10 pickles were written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = _save_py2_string


def _write_py2_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _fake_cifar(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny cifar-10-batches-py in the real format; returns {file: (images HWC, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        data = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # rows: 1024 R, then G, then B
        _write_py2_pickle(folder / name, {
            "batch_label": f"fake {name}", "labels": labels.tolist(), "data": data,
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        })
        written[name] = images, labels
    _write_py2_pickle(folder / "batches.meta", {
        "num_cases_per_batch": per_batch, "label_names": CIFAR_LABEL_NAMES, "num_vis": 3072,
    })
    return written


def test_fake_cifar_matches_the_documented_format(tmp_path):
    # The CIFAR page's reader, pickle.load(f, encoding="bytes"), sees bytes keys and [n, 3072] uint8 rows.
    _fake_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels"} <= set(batch)
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (4, 3072)


def test_cifar_round_trips_exactly_in_hwc_order(tmp_path):
    written = _fake_cifar(tmp_path)
    train = load_cifar10(tmp_path, split="train", image_size=32, num_samples=None, download=False,
                         verify_checksums=False)
    expected = [written[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(train.images, np.concatenate([im for im, _ in expected]))
    np.testing.assert_array_equal(train.labels, np.concatenate([lab for _, lab in expected]))
    assert train.class_names == tuple(CIFAR_LABEL_NAMES)
    test = load_cifar10(tmp_path, split="test", image_size=32, num_samples=3, download=False,
                        verify_checksums=False)
    np.testing.assert_array_equal(test.images, written["test_batch"][0][:3])


def test_cifar_resizes_and_takes_the_first_n(tmp_path):
    written = _fake_cifar(tmp_path)
    train = load_cifar10(tmp_path, split="train", image_size=16, num_samples=6, download=False,
                         verify_checksums=False)
    assert train.images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(train.labels[4:], written["data_batch_2"][1][:2])
    # Shrinking averages: each 16 px image tracks the 2x2 means of its 32 px source.
    source = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0][:2]]).astype(float)
    pooled = source.reshape(6, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    assert np.corrcoef(pooled.ravel(), train.images.ravel().astype(float))[0, 1] > 0.5


def test_cifar_checksums_reject_a_fake_folder_by_default(tmp_path):
    _fake_cifar(tmp_path)
    with pytest.raises(DatasetUnavailable, match="corrupted"):
        _load("cifar10", root=str(tmp_path))


def test_cifar_missing_without_download_fails_at_once_naming_the_path(tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        _load("cifar10", root=str(tmp_path), download=False)
    assert time.monotonic() - start < 1
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message


def test_cifar_failed_download_fails_fast_naming_the_path(tmp_path, monkeypatch):
    # A closed local port: refused at once even where a real network exists.
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable) as err:
        _load("cifar10", root=str(tmp_path), download=True)
    assert time.monotonic() - start < 15
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "download" in str(err.value)


# --- folder ------------------------------------------------------------------------------------------------


def _save(path: Path, colour, size=(20, 12), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def test_folder_labels_from_subfolders_and_disjoint_splits(tmp_path):
    colours = {}
    for i in range(10):
        cls = ["dog", "cat"][i % 2]
        colour = (20 * i, 255 - 20 * i, 100)
        path = tmp_path / cls / ("deep" if i == 3 else "") / f"{i}.{['png', 'jpg', 'bmp', 'webp'][i % 4]}"
        _save(path, colour)
        colours[colour] = cls
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    train, test = (_load("folder", root=str(tmp_path), split=s, image_size=8, num_samples=None) for s in ("train", "test"))
    assert train.class_names == test.class_names == ("cat", "dog")
    assert len(train.images) == 9 and len(test.images) == 1 and train.images.shape[1:] == (8, 8, 3)
    for ds in (train, test):
        for image, label in zip(ds.images, ds.labels):
            nearest = min(colours, key=lambda c: np.abs(image[4, 4].astype(int) - c).sum())
            assert np.abs(image[4, 4].astype(int) - nearest).max() <= 8  # jpg/webp are lossy
            assert ds.class_names[label] == colours[nearest]
    seen = {tuple(im[4, 4] // 16) for ds in (train, test) for im in ds.images}
    assert len(seen) == 10  # every image appears once across the splits
    capped = _load("folder", root=str(tmp_path), split="train", image_size=8, num_samples=4)
    np.testing.assert_array_equal(capped.images, train.images[:4])


def test_folder_flat_resizes_shorter_side_and_centre_crops(tmp_path):
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "a.png")
    _save(tmp_path / "b.png", (128, 128, 128), mode="L")  # greyscale becomes RGB
    _save(tmp_path / "c.png", (10, 20, 30, 0), mode="RGBA")
    ds = _load("folder", root=str(tmp_path), split="train", image_size=8, num_samples=None, seed=0)
    ds_test = _load("folder", root=str(tmp_path), split="test", image_size=8, num_samples=None, seed=0)
    assert ds.class_names == ("images",) and set(ds.labels) == {0}
    images = np.concatenate([ds.images, ds_test.images])
    assert images.shape == (3, 8, 8, 3)
    # Only the green middle third survives the crop (edge columns may ring slightly from bicubic).
    green = [im for im in images if im[4, 4, 1] > 200]
    assert len(green) == 1 and np.abs(green[0][:, 1:-1].astype(int) - (0, 255, 0)).max() <= 3
    assert any(np.all(im == 128) for im in images)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load("folder", root=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="0 images"):
        _load("folder", root=str(tmp_path / "empty"))
    _save(tmp_path / "mixed" / "top.png", (0, 0, 0))
    _save(tmp_path / "mixed" / "cls" / "x.png", (0, 0, 0))
    with pytest.raises(DatasetUnavailable, match="mixes"):
        _load("folder", root=str(tmp_path / "mixed"))


@pytest.mark.parametrize("content", [b"not an image", None])
def test_folder_names_an_unreadable_image(tmp_path, content):
    for i in range(3):
        _save(tmp_path / f"{i}.png", (10, 20, 30))
    bad = tmp_path / "bad.png"
    if content is None:  # a real PNG cut short
        _save(bad, (10, 20, 30), size=(64, 64))
        content = bad.read_bytes()[:60]
    bad.write_bytes(content)
    with pytest.raises(DatasetUnavailable, match="cannot read image .*bad.png"):
        for split in ("train", "test"):
            _load("folder", root=str(tmp_path), split=split, num_samples=None)


def test_folder_scales_16_bit_greyscale_instead_of_clipping(tmp_path):
    depth = np.full((12, 12), 0x8000, dtype=np.uint16)  # mid-grey in 16 bits; clipping would make it 255
    for name in ("a.png", "b.png"):
        Image.fromarray(depth).save(tmp_path / name)
    images = np.concatenate([_load("folder", root=str(tmp_path), split=s, image_size=8, num_samples=None).images
                             for s in ("train", "test")])
    assert (images == 0x80).all()


def test_require_images_names_the_folder_and_the_minimum(tmp_path):
    datasets.require_images(4, 4, split="test", dataset="folder", root=str(tmp_path), why="fid")
    with pytest.raises(DatasetUnavailable, match=r"data.root.*test split 1 images.*4 or more.*add images"):
        datasets.require_images(1, 4, split="test", dataset="folder", root=str(tmp_path), why="fid")
