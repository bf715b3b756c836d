"""Shared fixtures: a throw-away git+DVC copy of this repository with micro params, for end-to-end tests."""
import copy
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from driftin.evaluator import EvaluatorParams

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Seconds, not minutes: every stage runs for real on tiny sizes.
MICRO = {
    "conditional": True,  # the class-conditional path end to end (the paper-scale dry run covers the other)
    "data": {"image_size": 16, "train_samples": 200, "test_samples": 40},
    "unet": {"preset": "tiny"},
    # The curve's samples = evaluate.num_samples: its last point must then equal the fid stage's figure.
    "ddpm": {"steps": 6, "batch_size": 8, "warmup": 2, "checkpoint_every": 2, "eval_every": 2, "eval_samples": 24},
    "drift": {"steps": 4, "batch_size": 8, "positives": 16, "warmup": 2, "checkpoint_every": 2, "eval_every": 2,
              "eval_samples": 24, "conditioning": {"labels_per_step": 4, "negatives": 4}},
    "encoders": {"cache_images": 32, "mae": {"steps": 3, "batch_size": 16, "train_images": 64, "heldout_images": 16}},
    "evaluate": {"num_samples": 24, "ddim_steps": 5, "reference_samples": 100, "batch_size": 24, "bootstrap": 10,
                 "sweep": {"samples": 20, "ddpm": [1.0, 2.0], "drift": [1.0, 2.0]}},
    "evaluator": {"train_images": 300, "heldout_images": 100, "steps": 5, "batch_size": 16, "warmup": 2},
    "benchmark": {"modes": ["eager_fp32", "eager_bf16"], "batch_sizes": [1, 2], "ddim_steps": 5, "repeats": 1},
    "render": {"grid_samples": 8, "columns_per_class": 2},
}


def stage_args(script: str) -> list[str]:
    """The arguments dvc.yaml's cmd passes to stages/<script> (the paths), for tests that run a stage directly."""
    for spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        _, found, args = spec.get("do", spec)["cmd"].partition(f"stages/{script}")
        if found:
            return args.split()
    raise KeyError(f"no stage in dvc.yaml runs stages/{script}")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) else v
    return out


def micro_params() -> dict:
    return merge(yaml.safe_load((REPO / "params.yaml").read_text()), MICRO)


def env() -> dict:
    e = dict(os.environ)
    e.update(DVC_NO_ANALYTICS="1", PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}", OMP_NUM_THREADS="2",
             PYTHONUNBUFFERED="1")
    return e


def sh(cwd: Path, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=kw.pop("env", env()), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def make_repo(dest: Path, params: dict, results: bool = False) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into `dest`, with `params`, as a fresh git repo;
    metrics/ and plots/ only with `results` (a fresh clone), else the runs make their own."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file() and (results or not rel.startswith(("metrics/", "plots/"))):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(dest, "git", "init", "-q")
    commit(dest, "micro")
    return dest


@pytest.fixture(scope="session")
def micro_repo(tmp_path_factory) -> Path:
    """A micro-params copy of the repo on which `dvc repro` has run once, its results committed at HEAD."""
    repo = make_repo(tmp_path_factory.mktemp("micro"), micro_params())
    sh(repo, "dvc", "repro")
    commit(repo, "baseline results")
    return repo


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids oneDNN thread start-up and spinning, which on a busy 2-core machine made
    these tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluator_params(**overrides) -> EvaluatorParams:
    """The `evaluator` section of params.yaml with overrides (small budgets for tests)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["evaluator"]
    return EvaluatorParams.from_mapping({**raw, **overrides})


def toy_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """4 classes (square, disk, horizontal bar, vertical bar), light on dark, random position: uint8 [n, s, s, 3]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:size, 0:size]  # (s, s)
    cy, cx = (rng.uniform(0.35, 0.65, (2, n)) * size)[:, :, None, None]  # (n, 1, 1) each
    dy, dx = (yy - cy) / (0.25 * size), (xx - cx) / (0.25 * size)  # (n, s, s)
    masks = np.stack([np.maximum(abs(dy), abs(dx)) < 1, np.hypot(dy, dx) < 1,
                      (abs(dy) < 0.35) & (abs(dx) < 1.2), (abs(dx) < 0.35) & (abs(dy) < 1.2)])  # (4, n, s, s)
    mask = masks[labels, np.arange(n)][..., None]  # (n, s, s, 1)
    fg, bg = rng.uniform(128, 255, (n, 1, 1, 3)), rng.uniform(0, 96, (n, 1, 1, 3))  # light shape, dark ground
    return np.where(mask, fg, bg).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty caches under tmp_path and no network, whatever the machine running the tests has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return tmp_path


def assert_same_training(a, b) -> None:
    """Two trainer.TrainResults trained the same: weights, EMA and logged losses bit for bit (resume tests)."""
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for x, y in zip(a.ema.parameters(), b.ema.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
