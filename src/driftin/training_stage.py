"""The shared body of the two training stages: resumable training, then rank 0 writes model, metrics, curve and
removes the checkpoint (it is only there to survive a kill; keeping it would only fill the disk)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .closure import code_digest
from .config import Params, TrainConfig, as_dict
from .files import write_csv, write_json
from .generators import save_generator
from .runtime import DistInfo
from .trainer import LossFn, checkpoint_path, train


def checkpoint_root() -> Path:
    """Checkpoints live outside DVC's outputs (DVC deletes outputs before a stage runs); override with
    DRIFTIN_CHECKPOINTS, e.g. to keep them on a larger disk."""
    return Path(os.environ.get("DRIFTIN_CHECKPOINTS", "checkpoints"))


def run_training(*, kind: str, script: Path, params: Params, cfg: TrainConfig, model: nn.Module,
                 unet_overrides: dict, loss_fn: LossFn, identity: dict, inputs: list[Path], out: str, metrics: str,
                 plot: str, info: DistInfo, device: torch.device, log_every: int,
                 extra_metrics: dict | None = None, class_names: list[str] | None = None) -> None:
    """`script` is the stage script: its code and the driftin modules it imports are part of the checkpoint key.
    `class_names` (conditional models) go into the model file, so samplers can ask for a class by name."""
    ckpt = checkpoint_path(f"train_{kind}", identity, inputs, checkpoint_root(), code=code_digest(script))
    result = train(model, loss_fn, cfg, checkpoint=ckpt, seed=params.seed, info=info, device=device,
                   desc=f"train_{kind}", log_every=log_every)
    if not info.is_main:
        return
    save_generator(out, kind=kind, preset=params.unet.preset, image_size=params.data.image_size,
                   unet_overrides=unet_overrides, model=result.model, ema=result.ema,
                   meta={"params": as_dict(params), "steps": result.steps, "class_names": class_names or []})
    write_csv(plot, result.history)
    last = result.history[-1]
    write_json(metrics, {
        "steps": result.steps,
        "batch_size": cfg.batch_size,
        "final_loss": last["loss"],
        **{k: v for k, v in last.items() if k not in ("step", "loss", "lr")},
        "train_seconds": round(result.train_seconds, 2),
        "images_per_s": round(result.images_per_s, 1),
        "resumed_from_step": result.resumed_from,
        "world_size": info.world_size,
        "device": str(device),
        "unet_params_m": round(sum(p.numel() for p in result.model.parameters()) / 1e6, 3),
        **({"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)} if device.type == "cuda" else {}),
        **({"compile_s": round(result.compile_s, 2)} if result.compile_s is not None else {}),
        **({"fast": True} if cfg.fast else {}),
        **(extra_metrics or {}),
    })
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    print(f"train_{kind}: {result.steps} steps, {result.train_seconds:.0f} s of training, "
          f"{result.images_per_s:.0f} img/s this run -> {out}")
