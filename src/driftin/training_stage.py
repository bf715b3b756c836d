"""The shared body of the two training stages: resumable training with its quality curve, logged live through
DVCLive by rank 0; then rank 0 writes model and metrics and removes the checkpoint (it is only there to survive a
kill; keeping it would only fill the disk)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .closure import code_digest
from .config import Params, TrainConfig, as_dict
from .curves import CurveEvaluator
from .files import load_npz, write_json
from .generators import save_generator
from .judge import Judge
from .live_log import TrainingLog
from .rules import ConfigError
from .runtime import DistInfo
from .trainer import LossFn, checkpoint_path, train


def checkpoint_root() -> Path:
    """Checkpoints live outside DVC's outputs (DVC deletes outputs before a stage runs); override with
    DRIFTIN_CHECKPOINTS, e.g. to keep them on a larger disk."""
    return Path(os.environ.get("DRIFTIN_CHECKPOINTS", "checkpoints"))


def curve_evaluator(kind: str, params: Params, cfg: TrainConfig, *, eval_dir: str, num_classes: int,
                    device: torch.device, info: DistInfo) -> CurveEvaluator | None:
    """Rank 0's quality-curve judge (None on other ranks, or with eval_every 0)."""
    if not (info.is_main and cfg.eval_every > 0):
        return None
    ev = params.evaluate
    judge = Judge(eval_dir, device=str(device), batch_size=ev.batch_size)
    return CurveEvaluator(kind, judge=judge, evaluate=ev, samples=cfg.eval_samples, num_classes=num_classes,
                          image_size=params.data.image_size, seed=params.seed, device=device)


def run_training(*, kind: str, script: Path, params: Params, cfg: TrainConfig, model: nn.Module,
                 unet_overrides: dict, loss_fn: LossFn, identity: dict, inputs: list[Path], out: str, metrics: str,
                 live: str, eval_dir: str, test: str, info: DistInfo, device: torch.device, log_every: int,
                 extra_metrics: dict | None = None, class_names: list[str] | None = None) -> None:
    """`script` is the stage script: its code and the driftin modules it imports are part of the checkpoint key.
    `class_names` (conditional models) go into the model file, so samplers can ask for a class by name.
    `live` is the DVCLive folder; `eval_dir` the reference stage's output and `test` the held-out split (the
    curve's judge and its real floor)."""
    if cfg.eval_every > 0:  # a resumed run continues its curve only if it would be judged the same way
        missing = [p for p in (Path(eval_dir) / "reference.npz", Path(test)) if not p.is_file()]
        if missing:  # DVC builds both before training; a hand-run stage may not have them
            raise ConfigError(f"params.yaml: {kind}.eval_every is {cfg.eval_every}, and the quality curve needs "
                              f"{' and '.join(map(str, missing))} (built by `dvc repro reference prepare`); run "
                              f"those stages first, or set {kind}.eval_every: 0 to train without the curve.")
        ev = params.evaluate
        identity = {**identity, "curve": {"ddim_steps": ev.ddim_steps, "batch_size": ev.batch_size,
                                          "bootstrap": ev.bootstrap, "guidance": as_dict(ev.guidance)}}
        inputs = [*inputs, *sorted(Path(eval_dir).iterdir()), Path(test)]
    ckpt = checkpoint_path(f"train_{kind}", identity, inputs, checkpoint_root(), code=code_digest(script))
    curve = curve_evaluator(kind, params, cfg, eval_dir=eval_dir, num_classes=len(class_names or []),
                            device=device, info=info)
    log = TrainingLog(live) if info.is_main else None
    try:
        result = train(model, loss_fn, cfg, checkpoint=ckpt, seed=params.seed, info=info, device=device,
                       desc=f"train_{kind}", log_every=log_every, evaluate=curve, on_log=log)
    finally:
        if log is not None:
            log.close()
    if not info.is_main:
        return
    curve_metrics = {}
    if curve is not None:
        held_out = load_npz(test)
        floor = curve.floor(held_out["images"], held_out.get("labels"))
        last = result.evals[-1]
        curve_metrics = {"curve": {
            "points": len(result.evals), "samples": cfg.eval_samples, "eval_seconds": round(result.eval_seconds, 2),
            # The curve's cost, as a share of the stage's training plus evaluation time.
            "eval_share": round(result.eval_seconds / max(result.train_seconds + result.eval_seconds, 1e-9), 4),
            "final": {k: v for k, v in last.items()
                      if k not in ("step", "train_seconds", "eval_seconds") and v is not None},
            "real_floor": {k: floor[k] for k in ("fid", "kid", "recognisability") if k in floor},
        }}
    save_generator(out, kind=kind, preset=params.unet.preset, image_size=params.data.image_size,
                   unet_overrides=unet_overrides, model=result.model, ema=result.ema,
                   meta={"params": as_dict(params), "steps": result.steps, "class_names": class_names or []})
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
        **curve_metrics,
    })
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    print(f"train_{kind}: {result.steps} steps, {result.train_seconds:.0f} s of training, "
          f"{result.images_per_s:.0f} img/s this run -> {out}")
