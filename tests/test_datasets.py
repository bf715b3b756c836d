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
from standins import CIFAR_LABEL_NAMES
from standins import fake_cifar10 as _fake_cifar

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


def test_load_dataset_passes_the_checksum_switch(tmp_path):
    """params `data.verify_checksums: false` reaches the CIFAR-10 loader (a stand-in folder cannot match md5s)."""
    _fake_cifar(tmp_path)
    with pytest.raises(DatasetUnavailable, match="corrupted"):
        load_dataset("cifar10", split="test", image_size=32, root=str(tmp_path), num_samples=2, seed=0,
                     download=False)
    test = load_dataset("cifar10", split="test", image_size=32, root=str(tmp_path), num_samples=2, seed=0,
                        download=False, verify_checksums=False)
    assert test.images.shape == (2, 32, 32, 3)


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
