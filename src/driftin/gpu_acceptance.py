"""GPU acceptance: one command that checks the paper-scale path on one (or two) GPUs in minutes.

    python -m driftin.gpu_acceptance --out metrics/gpu/summary.json

It runs, on a throw-away copy of this repository (so the user's workspace and DVC cache are untouched):
1. the CUDA tests (`pytest -m cuda`);
2. the real pipeline (`dvc repro`) with the base UNet at 32x32 on the embedded shapes data for `--steps` steps of
   DDPM and drift training (bf16 autocast, the plain path), the DDPM stage interrupted with Ctrl-C once its first
   checkpoint is on disk and then resumed (the resume check), and the benchmark matrix with every mode at batch
   1, 8, 32 and 128;
3. both training stages again on the fast path (`fast` and `compile`: the paper-scale network and batch), for
   their images/s against the plain path's and their compile time;
4. with two or more GPUs, both training stages again (plain path) as 2-rank NCCL runs;
and writes one JSON summary: training speeds (plain, fast, their ratio against issue #13's 3x target for DDPM),
benchmark speeds, compile times, drift vs DDIM ratio per batch size with the best mode of each (against the 50x
target), the resume check, peak GPU memory. `--smoke` runs the same plumbing on the CPU with tiny sizes (minutes,
fast path without compile), to check the script itself on a machine without a GPU.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from .files import write_json

REPO = Path(__file__).resolve().parents[2]

# The acceptance preset: paper-scale network and batch, shapes data (no download needed), short training.
GPU_PRESET = {
    "device": "cuda", "encoder": "mae",
    "data": {"dataset": "shapes", "image_size": 32, "train_samples": 20000, "test_samples": 2000},
    "unet": {"preset": "base", "dropout": 0.1},
    "ddpm": {"batch_size": 128, "lr": 0.0002, "warmup": 50, "checkpoint_every": 50},
    "drift": {"batch_size": 128, "positives": 256, "lr": 0.0002, "warmup": 50, "checkpoint_every": 100},
    "encoders": {"cache_images": 4096},
    "evaluate": {"num_samples": 2000, "reference_samples": 5000, "batch_size": 500, "bootstrap": 100},
    "benchmark": {"modes": ["eager_fp32", "eager_bf16", "bf16", "compile", "compile_max_autotune", "cuda_graphs",
                            "bf16_cuda_graphs"],
                  "batch_sizes": [1, 8, 32, 128], "repeats": 5, "warmup": 2},
}
# Issue #13's targets: DDPM training img/s on the fast path at least 3x the plain path's, and drift at least 50x
# DDIM-50's images/s at every batch size, each generator in its best mode.
TRAIN_SPEEDUP_TARGET = 3.0
SAMPLING_RATIO_TARGET = 50.0
# The fast path as the acceptance run trains it; the CPU smoke run leaves compile out (minutes on 2 cores).
FAST = {"fast": True, "compile": True}
SMOKE_FAST = {"fast": True, "compile": False}
# The same plumbing on a CPU in minutes: tiny network and counts; compile modes left out (slow to compile).
SMOKE_PRESET = {
    "device": "cpu", "encoder": "mae",
    "data": {"dataset": "shapes", "image_size": 16, "train_samples": 400, "test_samples": 60},
    "unet": {"preset": "tiny"},
    "ddpm": {"batch_size": 8, "warmup": 2, "checkpoint_every": 2},
    "drift": {"batch_size": 8, "positives": 16, "warmup": 2, "checkpoint_every": 2},
    "encoders": {"cache_images": 32, "mae": {"steps": 3, "batch_size": 16}},
    "evaluate": {"num_samples": 24, "ddim_steps": 5, "reference_samples": 100, "batch_size": 24,
                 "bootstrap": 20},
    "benchmark": {"modes": ["eager_fp32", "bf16", "cuda_graphs"], "batch_sizes": [1, 2], "ddim_steps": 5, "repeats": 1},
    "render": {"grid_samples": 8},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cwd: Path, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    print(f"[acceptance] {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _copy_repo(dest: Path, params: dict) -> None:
    """Tracked and untracked-not-ignored files, the given params, as a fresh git repo (dvc needs a commit)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=acceptance", "-c", "user.email=a@a", "commit", "-qm", "acceptance"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)


def _read(repo: Path, rel: str) -> dict:
    return json.loads((repo / rel).read_text())


def _interrupt_and_resume(repo: Path, timeout: float) -> dict:
    """Start DDPM training, Ctrl-C it once a checkpoint exists, run it again: it must resume, not restart."""
    _run(repo, "dvc", "repro", "prepare", timeout=timeout)
    proc = subprocess.Popen(["dvc", "repro", "train_ddpm"], cwd=repo, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    checkpoints: list[Path] = []
    while time.time() < deadline and not checkpoints and proc.poll() is None:
        # last.pt only: `*.pt` also matched the atomic writer's temporary file, gone by the time it was read.
        checkpoints = list((repo / "checkpoints").glob("train_ddpm-*/last.pt"))
        time.sleep(0.5)
    interrupted = proc.poll() is None and bool(checkpoints)
    if interrupted:
        time.sleep(2.0)  # a few more steps past the checkpoint
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C to the whole group, as a terminal sends it
    proc.wait(timeout=120)
    saved = torch.load(sorted(checkpoints)[-1], map_location="cpu", weights_only=True)["step"] if checkpoints else 0
    _run(repo, "dvc", "repro", "train_ddpm", timeout=timeout)
    metrics = _read(repo, "metrics/train_ddpm.json")
    return {"interrupted": interrupted, "checkpoint_step": int(saved),
            "resumed_from_step": metrics["resumed_from_step"], "steps": metrics["steps"],
            "ok": interrupted and metrics["resumed_from_step"] >= saved > 0 and metrics["steps"] == _steps(repo)}


def _steps(repo: Path) -> int:
    return int(yaml.safe_load((repo / "params.yaml").read_text())["ddpm"]["steps"])


def _benchmark_rows(repo: Path) -> list[dict]:
    with open(repo / "plots/benchmark.csv") as f:
        return list(csv.DictReader(f))


def _training(repo: Path, kind: str) -> dict:
    m = _read(repo, f"metrics/train_{kind}.json")
    return {k: m.get(k) for k in ("steps", "batch_size", "images_per_s", "train_seconds", "world_size",
                                  "peak_memory_mb", "device", "compile_s", "feature_cache_on")}


def _set_training(repo: Path, **keys) -> None:
    """Set keys in both training sections of the copy's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for kind in ("ddpm", "drift"):
        params[kind].update(keys)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _fast_training(repo: Path, plain: dict, fast: dict, timeout: float) -> dict:
    """Both trainings again on the fast path; images/s against the plain run's. A failure is a result."""
    _set_training(repo, **fast)
    try:
        _run(repo, "dvc", "repro", "train_ddpm", "train_drift", timeout=timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        return {"settings": fast, "error": str(err).strip().splitlines()[0]}
    finally:
        _set_training(repo, fast=False, compile=False)
    out: dict = {"settings": fast}
    for kind in ("ddpm", "drift"):
        m = _training(repo, kind)
        out[kind] = {**m, "speedup_vs_plain": m["images_per_s"] / plain[kind]["images_per_s"]}
    out["ddpm_meets_3x"] = out["ddpm"]["speedup_vs_plain"] >= TRAIN_SPEEDUP_TARGET
    return out


def _sampling_targets(best_by_batch: dict) -> dict:
    """Per batch size: whether drift's images/s is at least SAMPLING_RATIO_TARGET x DDIM's, best mode of each."""
    return {b: (best["ratio"] >= SAMPLING_RATIO_TARGET if best else None) for b, best in best_by_batch.items()}


def _two_rank(repo: Path, timeout: float) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for kind in ("ddpm", "drift"):
        params[kind].update(nproc_per_node=2, steps=min(params[kind]["steps"], 100), fast=False, compile=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(repo, "dvc", "repro", "train_ddpm", "train_drift", timeout=timeout)
    return {kind: _training(repo, kind) for kind in ("ddpm", "drift")}


def acceptance(out: Path, *, steps: int, smoke: bool, timeout: float) -> dict:
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_acceptance: no CUDA device; run on a GPU machine, or with --smoke to check the "
                         "script's plumbing on a CPU")
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = _merge(SMOKE_PRESET if smoke else GPU_PRESET, {"ddpm": {"steps": steps}, "drift": {"steps": steps}})
    summary: dict = {"preset": preset, "smoke": smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    t0 = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-o", "addopts=", "-q",
                            "-p", "no:cacheprovider"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    summary["cuda_tests"] = {"returncode": tests.returncode, "last_line": tests.stdout.strip().splitlines()[-1:]}
    with tempfile.TemporaryDirectory(prefix="driftin-acceptance-") as tmp:
        repo = Path(tmp)
        _copy_repo(repo, _merge(base, preset))
        summary["resume"] = _interrupt_and_resume(repo, timeout)
        _run(repo, "dvc", "repro", timeout=timeout)
        summary["training"] = {kind: _training(repo, kind) for kind in ("ddpm", "drift")}
        bench = _read(repo, "metrics/benchmark.json")
        best = {b: e.get("best") for b, e in bench["by_batch"].items()}
        summary["benchmark"] = {
            "device": bench["device"],
            "best_ratio_by_batch": best,
            f"ratio_at_least_{SAMPLING_RATIO_TARGET:.0f}x": _sampling_targets(best),
            "latency_ms_batch1": bench["latency_ms_batch1"],
            "rows": [{k: r[k] for k in ("model", "mode", "batch_size", "status", "reason", "images_per_s",
                                         "latency_ms_median", "compile_s")} for r in _benchmark_rows(repo)],
        }
        summary["fid"] = {k: v for k, v in _read(repo, "metrics/fid.json").items() if isinstance(v, dict)}
        summary["training_fast"] = _fast_training(repo, summary["training"], SMOKE_FAST if smoke else FAST, timeout)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        summary["two_rank_nccl"] = _two_rank(repo, timeout) if gpus >= 2 and not smoke else (
            f"skipped: {gpus} GPU(s)")
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out, summary)
    return summary


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m driftin.gpu_acceptance", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="metrics/gpu/summary.json", help="where the JSON summary goes")
    p.add_argument("--steps", type=int, default=300, help="training steps of each generator")
    p.add_argument("--smoke", action="store_true", help="CPU plumbing check with tiny sizes")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed to each command")
    args = p.parse_args()
    s = acceptance(Path(args.out), steps=args.steps, smoke=args.smoke, timeout=args.timeout)
    print(json.dumps({k: s[k] for k in ("cuda_tests", "resume", "training", "training_fast", "wall_seconds")},
                     indent=2))
    for b, best in s["benchmark"]["best_ratio_by_batch"].items():
        if best:
            print(f"{b}: drift {best['drift_images_per_s']:.0f} img/s ({best['drift_mode']}) vs DDIM "
                  f"{best['ddpm_images_per_s']:.1f} img/s ({best['ddpm_mode']}): {best['ratio']:.0f}x")


if __name__ == "__main__":
    main()
