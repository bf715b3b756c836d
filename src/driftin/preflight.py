"""Preflight: everything the chosen params need, checked in seconds before any expensive stage.

A paper-scale run fails expensively when a file is missing: the DINOv2 or ResNet-18 weights are first read by
`cache_features` and Inception by `reference`, both after hours of DDPM training. The pipeline's first stage,
`preflight` (`prepare` depends on its output), runs it, and `python -m driftin.preflight` runs it by hand. Every
problem is listed at once; nothing is downloaded here (a file that is missing but whose host answers counts as fine: the
stage that needs it downloads it).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cli
from .config import Params, load_params
from .datasets import CIFAR10_FOLDER, CIFAR10_URL, DatasetUnavailable, cifar10_unavailable
from .downloads import host_reachable
from .encoders import WeightsUnavailable, dinov2_weights_file, resnet18_weights_file
from .fidelity import InceptionWeightsUnavailable, inception_weights_file
from .mae import MAEConfig
from .unet import build_unet

GIB = 2**30
# Headroom on top of the estimate: DVC's cache copy of small outputs, samples, logs, inductor's cache.
DISK_MARGIN_BYTES = 1 * GIB


class PreflightFailed(FileNotFoundError):
    """What the params need is not there (files, a device, disk); the message lists every problem. A
    FileNotFoundError, so every stage reports it as one paragraph without a traceback."""


@dataclass(frozen=True)
class DiskEstimate:
    feature_cache: int  # bytes of cached real feature maps (fp16), written once and copied into the DVC cache
    checkpoints: int  # bytes of the two training checkpoints (model, EMA, two AdamW moments, fp32)
    models: int  # bytes of the two generator files (model + EMA)

    @property
    def total(self) -> int:
        return 2 * self.feature_cache + self.checkpoints + 2 * self.models + DISK_MARGIN_BYTES


def feature_map_shapes(params: Params) -> list[tuple[int, int, int]]:
    """(C, H, W) of every map the chosen encoder gives for one image (the feature cache's layout)."""
    s = params.data.image_size
    if params.encoder == "pixel":
        return [(3, s, s), (3, s // 2, s // 2)]
    if params.encoder == "resnet18":  # stride-1 stem, no max-pool: layer1..4 at s, s/2, s/4, s/8
        return [(64 * 2**i, s // 2**i, s // 2**i) for i in range(4)]
    if params.encoder == "dinov2":  # ViT-B/14 patch tokens of four blocks at the resize resolution
        g = params.encoders.dinov2.resize // 14
        return [(768, g, g)] * 4
    return [(w, s // 2**i, s // 2**i) for i, w in enumerate(MAEConfig().widths)]


def estimate_disk(params: Params) -> DiskEstimate:
    per_image = sum(c * h * w for c, h, w in feature_map_shapes(params)) * 2  # fp16
    with torch.device("meta"):  # count parameters without allocating 38M floats
        n_params = sum(p.numel() for p in build_unet(params.unet.preset, params.data.image_size).parameters())
    return DiskEstimate(feature_cache=2 * params.encoders.cache_images * per_image,  # each image and its flip
                        checkpoints=2 * 16 * n_params, models=2 * 8 * n_params)


def _data_problem(params: Params) -> str | None:
    d = params.data
    if d.dataset == "cifar10":
        root = Path(d.root)
        if (root / CIFAR10_FOLDER).is_dir():
            return None
        reason = "folder missing and data.download is false" if not d.download else host_reachable(CIFAR10_URL)
        return None if reason is None else str(cifar10_unavailable(root, reason))
    if d.dataset == "folder" and not Path(d.root).is_dir():
        return (f"image folder {Path(d.root).absolute()} (data.root) does not exist: put your images there "
                "(subfolders become class labels) or point data.root at them")
    return None


def _weights_problems(params: Params) -> list[str]:
    checks = []
    if params.encoder == "resnet18":
        checks.append(lambda: resnet18_weights_file(params.encoders.resnet18.weights))
    if params.encoder == "dinov2":
        checks.append(lambda: dinov2_weights_file(params.encoders.dinov2.weights, download=False))
    if params.data.dataset == "cifar10":  # FID in Inception space
        checks.append(lambda: inception_weights_file(params.evaluate.inception_weights, download=False))
    problems = []
    for check in checks:
        try:
            check()
        except (WeightsUnavailable, InceptionWeightsUnavailable, DatasetUnavailable) as err:
            problems.append(str(err))
    return problems


def _device_problem(params: Params) -> str | None:
    if params.device == "cuda" and not torch.cuda.is_available():
        return ("params.yaml asks for device: cuda, but PyTorch sees no CUDA GPU on this machine: set `device: auto` "
                "(or cpu), or check `nvidia-smi` and that the installed torch is a CUDA build")
    gpus_needed = max(params.ddpm.nproc_per_node, params.drift.nproc_per_node)
    if torch.cuda.is_available() and params.device != "cpu" and gpus_needed > torch.cuda.device_count():
        return (f"ddpm/drift.nproc_per_node asks for {gpus_needed} ranks, one GPU each, but this machine has "
                f"{torch.cuda.device_count()} GPU(s)")
    return None


def _disk_problem(params: Params, where: Path) -> str | None:
    need = estimate_disk(params).total
    free = shutil.disk_usage(where).free
    if free >= need:
        return None
    return (f"the run needs about {need / GIB:.1f} GiB of disk (feature cache twice, with DVC's copy, checkpoints, "
            f"models, {DISK_MARGIN_BYTES / GIB:.0f} GiB margin) but {where.absolute()} has {free / GIB:.1f} GiB free: "
            "free space, lower encoders.cache_images, or set DRIFTIN_CHECKPOINTS to a larger disk")


def problems(params: Params, where: Path = Path(".")) -> list[str]:
    """Every reason the run would fail for lack of a file, device or disk; empty when it can start."""
    found = [_data_problem(params), *_weights_problems(params), _device_problem(params),
             _disk_problem(params, where)]
    return [p for p in found if p]


def check(params: Params, where: Path = Path(".")) -> None:
    """Raise PreflightFailed listing every problem, or return silently."""
    found = problems(params, where)
    if found:
        listed = " ".join(f"({i}) {p}" for i, p in enumerate(found, 1))
        raise PreflightFailed(f"preflight found {len(found)} problem(s) before any work: {listed}")


def run(params: Params) -> dict[str, float]:
    """Print the disk estimate, raise PreflightFailed listing every problem, else return the estimate (GiB)."""
    est = estimate_disk(params)
    print(f"preflight: dataset {params.data.dataset}, encoder {params.encoder}, device {params.device}; disk needed "
          f"~{est.total / GIB:.1f} GiB (feature cache {est.feature_cache / GIB:.2f} GiB, checkpoints "
          f"{est.checkpoints / GIB:.2f} GiB)")
    check(params)
    print("preflight: ok")
    return {"disk_needed_gib": round(est.total / GIB, 3), "feature_cache_gib": round(est.feature_cache / GIB, 3),
            "checkpoints_gib": round(est.checkpoints / GIB, 3)}


def main() -> None:
    p = cli.parser("Check in seconds that everything the params need is present or downloadable.")
    run(load_params(p.parse_args().params))


if __name__ == "__main__":
    cli.run(main)
