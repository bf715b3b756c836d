"""Datasets as uint8 arrays: the embedded `shapes`, torchvision's CIFAR-10, or any `folder` of images.

Every loader returns the same `Dataset` (images uint8 [N, H, W, 3], labels int64 [N], class names), is
deterministic in its arguments, and fails fast with a message that says how to supply missing data offline.
"""
from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from driftin.rules import choice, positive, require
from driftin.shapes import SHAPE_CLASSES, render_shapes

DATASET_NAMES = ("shapes", "cifar10", "folder")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CIFAR10_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
# Per socket operation. torchvision's urlopen passes no timeout, so without this a black-holed host hangs.
DOWNLOAD_TIMEOUT_S = 10.0
FOLDER_TEST_FRACTION = 0.1  # share of a folder's images held out as its test split


class DatasetUnavailable(FileNotFoundError):
    """A dataset's files are missing or unusable; the message says where they are expected and how to add them."""


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N], indexes class_names
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (n,):
            raise ValueError(f"labels must be int64 [{n}], got {self.labels.dtype} {self.labels.shape}")


@functools.cache
def cifar10_class() -> type:
    """torchvision's CIFAR-10 dataset class with a checksum switch, built on first use: importing torchvision costs
    ~4 s (it loads every model definition), which every stage paid at start-up when only cifar10 needs it."""
    import torchvision

    class CIFAR10(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR-10 loader with a switch for its per-file md5 checks.

        torchvision checks every batch file against the official md5 on each load. That guards real data, but
        no small test folder can match those checksums, so `verify_checksums=False` checks only that the files
        exist. Parsing is torchvision's own code either way; the checks stay on by default (params
        `data.verify_checksums`), and a download always verifies the archive's md5.
        """

        def __init__(self, root: str | Path, *, train: bool, verify_checksums: bool = True) -> None:
            if not verify_checksums:
                # torchvision's check_integrity(path, md5=None) only tests that the file exists; these instance
                # attributes shadow the class-level (name, md5) lists that torchvision reads.
                self.train_list = [[name, None] for name, _ in type(self).train_list]
                self.test_list = [[name, None] for name, _ in type(self).test_list]
                self.meta = {**type(self).meta, "md5": None}
            super().__init__(root, train=train, download=False)

    return CIFAR10


def __getattr__(name: str):
    """`datasets.CIFAR10` stays available (PEP 562), built on first access."""
    if name == "CIFAR10":
        return cifar10_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# torchvision's CIFAR10.base_folder, .filename and .url, spelt out (a test checks they agree) so that the
# preflight can name them without importing torchvision (~4 s of its start-up).
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def cifar10_unavailable(root: Path, reason: str) -> DatasetUnavailable:
    """The error for a missing or broken CIFAR-10 folder: where it was expected and how to supply it offline."""
    root = root.absolute()  # the message must say where, whatever directory the stage ran in
    folder = root / CIFAR10_FOLDER
    return DatasetUnavailable(
        f"CIFAR-10 is not available: expected the folder '{CIFAR10_FOLDER}' at {folder} ({reason}). "
        f"To supply it offline, download {CIFAR10_FILENAME} from {CIFAR10_PAGE} on a machine with internet "
        f"access, copy it here and extract it into {root} (tar -xzf {CIFAR10_FILENAME} -C {root}), "
        f"which creates {folder}."
    )


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    CIFAR10 = cifar10_class()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as e:  # URLError and timeouts are OSErrors; RuntimeError: bad archive md5
        raise cifar10_unavailable(root, f"download from {CIFAR10.url} failed: {e}") from e
    finally:
        socket.setdefaulttimeout(previous)


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bicubic resize of square uint8 images [N, H, H, 3] -> [N, S, S, 3] (PIL antialiases when shrinking)."""
    if images.shape[1] == image_size:
        return images
    size = (image_size, image_size)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BICUBIC)) for im in images])


def load_cifar10(
    root: str | Path, *, split: str, image_size: int, num_samples: int | None, download: bool,
    verify_checksums: bool = True,
) -> Dataset:
    """CIFAR-10 from <root>/cifar-10-batches-py (first `num_samples` of the split), resized to image_size."""
    root, CIFAR10 = Path(root), cifar10_class()
    if not (root / CIFAR10.base_folder).is_dir():
        if not download:
            raise cifar10_unavailable(root, "folder missing and download=False")
        _download_cifar10(root)
    try:
        cifar = CIFAR10(root, train=split == "train", verify_checksums=verify_checksums)
    except RuntimeError as e:  # torchvision: a batch file is missing or fails its md5
        raise cifar10_unavailable(root, f"its files are incomplete or corrupted: {e}") from e
    images = cifar.data[:num_samples]  # (N, 32, 32, 3): torchvision already reorders CHW rows to HWC
    labels = np.asarray(cifar.targets[:num_samples], dtype=np.int64)
    return Dataset(_resize(images, image_size), labels, tuple(cifar.classes))


def _image_paths(root: Path) -> list[Path]:
    """Image files under root, recursively, sorted by relative path; hidden files and folders skipped."""
    paths = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(
        (p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit greyscale (mode I;16*, or I, in which Pillow < 12 opens 16-bit PNGs) -> 8-bit L by its high byte.

    Pillow's convert("RGB") clips these at 255 instead of scaling, which turns almost every pixel white.
    """
    if not im.mode.startswith("I"):
        return im
    depth = np.clip(np.asarray(im).astype(np.int64), 0, 2**16 - 1)  # (H, W)
    return Image.fromarray((depth >> 8).astype(np.uint8), mode="L")


def _read_image(path: Path, image_size: int) -> np.ndarray:
    """One image -> uint8 [S, S, 3]: shorter side resized to S (bicubic), centre-cropped, RGB."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale >= S, much faster
            im = _to_8bit(ImageOps.exif_transpose(im)).convert("RGB")
            im = ImageOps.fit(im, (image_size, image_size), method=Image.Resampling.BICUBIC)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:  # not an image despite its suffix, or truncated/corrupt
        raise DatasetUnavailable(f"cannot read image {path.absolute()} ({e}): replace it with a valid "
                                 f"{', '.join(IMAGE_SUFFIXES)} image or remove it from the folder") from e


def load_folder(
    root: str | Path, *, split: str, image_size: int, num_samples: int | None, seed: int
) -> Dataset:
    """Images under `root`, labelled by their immediate subfolder (or all class "images" if none).

    Sorted paths are shuffled with `seed`; the first FOLDER_TEST_FRACTION (at least 1) is the test split,
    the rest the train split; `num_samples` caps the split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetUnavailable(f"image folder {root.absolute()} does not exist: put your images there (subfolders "
                                 "become class labels) or point data.root in params.yaml at them")
    paths = _image_paths(root)
    if len(paths) < 2:
        raise DatasetUnavailable(
            f"image folder {root} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}, searched "
            "recursively); need at least 2 to hold out a test split"
        )
    top = [p for p in paths if p.parent == root]
    if top and len(top) < len(paths):
        raise DatasetUnavailable(
            f"image folder {root} mixes images at its top level (e.g. {top[0].name}) with images in "
            "subfolders; put all images in class subfolders, or none"
        )
    if top:
        class_names, labels = ("images",), np.zeros(len(paths), dtype=np.int64)
    else:
        folders = [p.relative_to(root).parts[0] for p in paths]
        class_names = tuple(sorted(set(folders)))
        labels = np.array([class_names.index(f) for f in folders], dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(paths))
    n_test = max(1, int(len(paths) * FOLDER_TEST_FRACTION))
    chosen = (order[:n_test] if split == "test" else order[n_test:])[:num_samples]
    images = np.stack([_read_image(paths[i], image_size) for i in chosen])
    return Dataset(images, labels[chosen], class_names)


def validate(data) -> None:
    """The `data` section (a config.DataConfig)."""
    choice(data.dataset, DATASET_NAMES, "data.dataset")
    positive(data.image_size, "data.image_size")
    if data.train_samples is not None:
        positive(data.train_samples, "data.train_samples")
    require(data.dataset != "shapes" or data.train_samples is not None, "data.train_samples",
            "must be set for the procedural 'shapes' dataset (how many images to render)")
    positive(data.test_samples, "data.test_samples")


def require_images(count: int, needed: int, *, split: str, dataset: str, root: str, why: str) -> None:
    """Fail before any training when a prepared split is too small for the stages downstream."""
    if count >= needed:
        return
    if dataset == "folder":
        where = (f"image folder {Path(root).absolute()} (data.root) gives its {split} split {count} images "
                 f"(the test split is {FOLDER_TEST_FRACTION:.0%} of the folder, at least 1)")
        fix = f"add images to the folder, or raise data.{split}_samples if it caps the split"
    else:
        where, fix = f"the {dataset} {split} split has {count} images", f"raise data.{split}_samples"
    raise DatasetUnavailable(f"{where}, but {needed} or more are needed: {why}. To fix it, {fix}.")


def load_dataset(
    name: str, *, split: str, image_size: int, root: str, num_samples: int | None, seed: int, download: bool,
    verify_checksums: bool = True,
) -> Dataset:
    """Load dataset `name` (one of DATASET_NAMES); see the module docstring and each loader."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if image_size < 4 or (num_samples is not None and num_samples < 1):
        raise ValueError(f"need image_size >= 4 and num_samples >= 1 (or None); got {image_size}, {num_samples}")
    if name == "shapes":
        if num_samples is None:
            raise ValueError("the procedural 'shapes' dataset needs num_samples (how many images to render)")
        # Seeds 2*seed and 2*seed+1 give every (seed, split) its own RNG streams: train and test never overlap.
        images, labels = render_shapes(num_samples, image_size=image_size, seed=2 * seed + SPLITS.index(split))
        return Dataset(images, labels, SHAPE_CLASSES)
    if name == "cifar10":
        return load_cifar10(root, split=split, image_size=image_size, num_samples=num_samples, download=download,
                            verify_checksums=verify_checksums)
    return load_folder(root, split=split, image_size=image_size, num_samples=num_samples, seed=seed)
