"""One training loop for both objectives: AdamW, warm-up, grad clip, EMA, bf16 on CUDA, DDP, resumable checkpoints.

DDPM and drifting differ only in the `loss_fn` they pass. The loop owns everything that makes a run robust:
periodic atomic checkpoints keyed by the run's identity (params, input bytes and code), resume after Ctrl-C/kill, a
clean stop on NaN/Inf. Checkpoints exist only mid-run: the last step's state goes to the stage's outputs, never to a
checkpoint, so a finished run can never be "resumed" into a result under newer code or params.

Every cfg.eval_every steps (and after the last) rank 0 hands the EMA weights to an `evaluate` callback (the quality
curve); its time is kept out of the training seconds and img/s, and it runs under a forked RNG, so a run with the
curve trains exactly the weights of a run without it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .config import TrainConfig
from .files import file_digest, torch_save
from .rules import positive, require
from .runtime import DistInfo

# loss_fn(model, generator) -> (scalar loss, {name: float}) for one optimisation step on this rank's share.
LossFn = Callable[[nn.Module, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
# evaluate(ema model) -> {score: float}: one point of the quality curve (rank 0 only).
EvalFn = Callable[[nn.Module], dict[str, float]]
# on_log(kind, row): every history row ("train") and curve point ("eval") as it is made, e.g. to DVCLive.
LogFn = Callable[[str, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the last checkpoint on disk is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; a checkpoint was written first so the next run resumes."""


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module
    history: list[dict[str, float]]
    steps: int
    train_seconds: float
    resumed_from: int
    images_per_s: float = field(default=0.0)
    evals: list[dict[str, float]] = field(default_factory=list)  # the quality curve, one row per evaluation
    eval_seconds: float = 0.0  # spent on `evals`, all runs (not in train_seconds)
    compile_s: float | None = None  # with cfg.compile: wall time of this run's first step, which compiles


def validate(cfg: TrainConfig, section: str) -> None:
    """The optimisation keys shared by the `ddpm` and `drift` sections."""
    for name in ("steps", "batch_size", "lr", "checkpoint_every", "nproc_per_node"):
        positive(getattr(cfg, name), f"{section}.{name}")
    require(cfg.warmup >= 0, f"{section}.warmup", f"must be >= 0, got {cfg.warmup}")
    require(cfg.grad_clip > 0, f"{section}.grad_clip", f"must be positive, got {cfg.grad_clip}")
    require(0 <= cfg.ema < 1, f"{section}.ema", f"must be in [0, 1), got {cfg.ema}")
    require(cfg.eval_every >= 0, f"{section}.eval_every", f"must be >= 0 (0 turns the curve off), got {cfg.eval_every}")
    from .fidelity import MIN_SAMPLES  # FID's covariance and precision/recall's k-NN need a few samples
    require(cfg.eval_samples >= MIN_SAMPLES, f"{section}.eval_samples",
            f"must be at least {MIN_SAMPLES}, got {cfg.eval_samples}")
    require(cfg.batch_size % cfg.nproc_per_node == 0, f"{section}.batch_size",
            f"({cfg.batch_size}) must be divisible by {section}.nproc_per_node ({cfg.nproc_per_node}): "
            "every rank takes an equal share of the global batch.")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then constant (the seed's schedule)."""
    if cfg.warmup == 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """cfg.ema with a warm-up, (1 + step) / (10 + step) early on: a fixed 0.999 would keep most of the random
    initialisation in the EMA for the first thousands of steps, which ruins short runs."""
    return min(cfg.ema, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, *, foreach: bool = False) -> None:
    if foreach:  # one multi-tensor kernel instead of a launch per tensor (the base UNet has ~300)
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    else:
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a checkpoint is written before exiting."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # second Ctrl-C: stop right away
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    model: nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    checkpoint: Path,
    seed: int,
    info: DistInfo,
    device: torch.device,
    desc: str,
    log_every: int,
    progress: bool = True,
    evaluate: EvalFn | None = None,
    on_log: LogFn | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps, resuming from `checkpoint` if it exists. Only rank 0 writes the checkpoint,
    evaluates (`evaluate`, every cfg.eval_every steps and after the last; other ranks wait at their next
    collective) and logs (`on_log`; a resumed run first replays the checkpoint's rows).

    cfg.fast: channels-last weights (the objective gives channels-last batches), fused AdamW and a multi-tensor
    EMA; cfg.compile: torch.compile of the (DDP-wrapped) model. Both leave what is drawn, and so resume, alone.
    """
    model.to(device)
    if cfg.fast:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # fused only on request: the default keeps torch's own choice, and with it the CPU default's numbers.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0,
                            **({"fused": True} if cfg.fast else {}))
    # Per-rank stream for batches and noise; its state is checkpointed so a resumed run draws what it would have.
    gen = torch.Generator().manual_seed(seed * 1000 + info.rank)
    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    start, elapsed, eval_seconds = 0, 0.0, 0.0

    # Load to the CPU: RNG states must stay CPU ByteTensors (map_location=cuda broke every resume on a GPU);
    # load_state_dict copies weights and optimizer state to the parameters' device.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.is_file() else None
    if state is not None and state["step"] >= cfg.steps:
        # Only a run killed between its last step and its outputs could leave one; train again rather than
        # report 0 steps of training at 0 img/s.
        if info.is_main:
            tqdm.write(f"[{desc}] ignoring the finished checkpoint {checkpoint}; training from step 0")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        _set_rng_states(state["rng"][info.rank % len(state["rng"])], gen, device)
        history, start, elapsed = state["history"], state["step"], state["elapsed_s"]
        evals, eval_seconds = state["evals"], state["eval_seconds"]
        if info.is_main:
            tqdm.write(f"[{desc}] resuming from step {start}/{cfg.steps} ({checkpoint})")
    resumed_from = start
    evaluating = evaluate is not None and cfg.eval_every > 0 and info.is_main
    log = on_log if on_log is not None and info.is_main else (lambda kind, row: None)
    for kind, rows in (("train", history), ("eval", evals)):
        for row in rows:
            log(kind, row)

    net = DistributedDataParallel(model) if info.world_size > 1 else model
    if cfg.compile:
        net = torch.compile(net)  # compiles lazily, on the first step: timed below as compile_s
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def save(step: int) -> None:
        rng = _gather_rng_states(gen, info, device)
        if info.is_main:
            torch_save(checkpoint, {
                "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": rng,
                "history": history, "step": step, "elapsed_s": elapsed, "evals": evals,
                "eval_seconds": eval_seconds,
            })

    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (progress and info.is_main), dynamic_ncols=True)
    window: list[float] = []
    window_stats: dict[str, list[float]] = {}
    run_elapsed = 0.0  # this process's share of `elapsed`, for images/s
    first_step_s = 0.0
    tick = time.perf_counter()
    with _StopSignal() as stop:
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            net.train()
            with autocast:
                loss, stats = loss_fn(net, gen)
            loss_value = _global_mean(loss.detach().float(), info)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"[{desc}] the loss became {loss_value} at step {step}. Nothing after the last checkpoint "
                    f"was kept; {checkpoint} (step {_checkpoint_step(checkpoint)}) is intact. Lower the learning "
                    "rate or raise warm-up in params.yaml, then re-run: training resumes from that checkpoint."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ema_update(ema, model, ema_decay(step, cfg), foreach=cfg.fast)

            window.append(loss_value)
            for k, v in stats.items():
                window_stats.setdefault(k, []).append(v)
            done = step + 1
            now = time.perf_counter()
            if step == start:
                first_step_s = now - tick
            elapsed += now - tick
            run_elapsed += now - tick
            tick = now
            if done % log_every == 0 or done == cfg.steps:
                row = {"step": done, "loss": sum(window) / len(window), "lr": lr_at(step, cfg)}
                row.update({k: sum(v) / len(v) for k, v in window_stats.items()})
                history.append(row)
                log("train", row)
                window, window_stats = [], {}
            if evaluating and (done % cfg.eval_every == 0 or done == cfg.steps):
                t_eval = time.perf_counter()
                # Forked RNG: sampling and the bootstrap must not move the streams training draws from.
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    scores = evaluate(ema)
                spent = time.perf_counter() - t_eval
                eval_seconds += spent
                evals.append({"step": done, "train_seconds": round(elapsed, 3), "eval_seconds": round(spent, 3),
                              **scores})
                log("eval", evals[-1])
                tick = time.perf_counter()  # the evaluation is not training time
            ips = (done - resumed_from) * cfg.batch_size / run_elapsed
            bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{ips:.0f}", refresh=False)
            bar.update(1)
            if done == cfg.steps:
                break  # the final state goes to the outputs, not to a checkpoint; a Ctrl-C now is too late to matter
            if done % cfg.checkpoint_every == 0:
                save(done)
            if _any_rank(stop.received is not None, info, device):
                save(done)
                bar.close()
                raise TrainingInterrupted(
                    f"[{desc}] interrupted at step {done}/{cfg.steps}; checkpoint saved to {checkpoint}. "
                    "Re-run `dvc repro` to resume from it."
                )
    bar.close()
    trained = cfg.steps - resumed_from
    # A compiled run's first step is the compile (a minute for the base UNet): reported apart, as the benchmark
    # reports compile_s, and left out of images/s when there are other steps to measure.
    timed, seconds = trained, run_elapsed
    if cfg.compile and trained > 1:
        timed, seconds = trained - 1, run_elapsed - first_step_s
    return TrainResult(
        model=model, ema=ema, history=history, steps=cfg.steps, train_seconds=elapsed,
        resumed_from=resumed_from, images_per_s=cfg.batch_size * timed / seconds if trained else 0.0,
        compile_s=first_step_s if cfg.compile and trained else None,
        evals=evals, eval_seconds=eval_seconds,
    )


def _checkpoint_step(path: Path) -> int:
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _global_mean(x: torch.Tensor, info: DistInfo) -> float:
    if info.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world_size
    return float(x)


def _any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is True on any. The tensor lives on the training device: NCCL rejects CPU
    tensors (`No backend type associated with device type cpu`), gloo takes both."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def _rng_states(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG states: the batch/noise generator, torch's CPU stream (dropout on CPU) and, on a GPU,
    the device's CUDA stream (dropout there), so a resumed run draws what the uninterrupted one would have."""
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_states(state: dict[str, torch.Tensor], gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["gen"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _gather_rng_states(gen: torch.Generator, info: DistInfo, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states (batches/noise and dropout), so a resume continues each rank's streams."""
    state = _rng_states(gen, device)
    if info.world_size == 1:
        return [state]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(info.world_size)]
    dist.all_gather_object(out, state)
    return out


def checkpoint_path(stage: str, identity: dict, inputs: list[Path], root: Path, *, code: str) -> Path:
    """Where `stage` keeps its resumable checkpoint: keyed by a hash of its params, its input files' bytes and
    its code (`closure.code_digest` of the stage script), so a run never resumes weights trained with other
    params, other upstream data or other code."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    h.update(code.encode())
    for p in inputs:
        h.update(file_digest(p).encode())
    return root / f"{stage}-{h.hexdigest()[:16]}" / "last.pt"
