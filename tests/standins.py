"""Stand-ins for downloads a test machine cannot make: CIFAR-10 in its real pickle format and random-weight files
under the real file names of ResNet-18, DINOv2 and torch-fidelity's Inception, where the real loaders look."""
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def fake_cifar10(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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


def random_weight_files(torch_home: Path, hf_home: Path) -> dict[str, Path]:
    """Randomly initialised weights saved where torchvision, timm (Hugging Face cache) and torch-fidelity look when
    TORCH_HOME and HF_HOME point here: the real loading code runs, only the numbers are random."""
    import timm
    import torchvision
    from safetensors.torch import save_file
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    from torchvision.models import ResNet18_Weights

    from driftin.encoders import DINOV2_FILE, DINOV2_HF_REPO, DINOV2_MODEL
    from driftin.fidelity import INCEPTION_WEIGHTS_FILE

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    files = {"resnet18": checkpoints / Path(ResNet18_Weights.IMAGENET1K_V1.url).name,
             "inception": checkpoints / INCEPTION_WEIGHTS_FILE,
             "dinov2": hf_home / "hub" / f"models--{DINOV2_HF_REPO.replace('/', '--')}" / "snapshots" / "main"
             / DINOV2_FILE}
    torch.save(torchvision.models.resnet18().state_dict(), files["resnet18"])
    # torch-fidelity's extractor loads its state dict in __init__: build it around an empty one, keep its init.
    empty = checkpoints / "empty.pth"
    torch.save({}, empty)
    load = fe.FeatureExtractorInceptionV3.load_state_dict
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict = load
    torch.save(net.state_dict(), files["inception"])
    files["dinov2"].parent.mkdir(parents=True, exist_ok=True)
    vit = timm.create_model(DINOV2_MODEL, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(files["dinov2"]))
    return files
