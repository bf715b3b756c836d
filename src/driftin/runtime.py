"""Process-level setup shared by every stage: device choice, torchrun/DDP, seeds, CPU threads."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .rules import choice, require

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(RuntimeError):
    """The params ask for hardware this machine does not have."""


def validate(*, seed: int, device: str) -> None:
    """The top-level `seed` and `device` keys."""
    choice(device, DEVICES, "device")
    require(seed >= 0, "seed", f"must be >= 0, got {seed}")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when present; `cuda` on a machine without it fails with what to change."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                "params.yaml asks for device: cuda, but PyTorch sees no CUDA GPU on this machine. "
                "Set `device: auto` (or cpu) in params.yaml, or run `dvc exp run -S device=cpu`; "
                "on a GPU machine check `nvidia-smi` and that the installed torch is a CUDA build."
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        """The default process group under DDP, else None (single process)."""
        return dist.group.WORLD if self.world_size > 1 else None


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched with several ranks; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads() -> None:
    """Use every core for intra-op parallelism on CPU, unless the user pinned OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
