"""End to end: the real `dvc repro`, `dvc exp run -S encoder=pixel`, `dvc metrics diff`, resume after a kill, and
CPU determinism, all on micro params in throw-away git copies of this repository."""
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import env, make_repo, merge, micro_params, sh

pytestmark = pytest.mark.slow

TIMING_KEYS = {"train_seconds", "images_per_s", "seconds", "cache_seconds", "positives_ms_cached",
               "positives_ms_reencoded", "positives_speedup"}


def read(repo: Path, rel: str):
    return json.loads((repo / rel).read_text())


def without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in TIMING_KEYS}


def test_repro_runs_every_stage(micro_repo):
    fid = read(micro_repo, "metrics/fid.json")
    for model in ("ddpm", "drift", "real_test", "noise"):
        assert set(fid[model]) == {"fid", "kid_mean", "kid_std", "precision", "recall"}
    bench = read(micro_repo, "metrics/benchmark.json")
    assert set(bench["by_batch"]) == {"bs1", "bs2"}
    assert bench["by_batch"]["bs1"]["best"]["ratio"] > 1  # one NFE beats five
    rows = (micro_repo / "plots/benchmark.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header + model x mode x batch
    for name in ("grid.png", "speed.gif", "batch.gif", "ddpm_training.png", "drift_training.png", "fid.png",
                 "benchmark.png"):
        assert (micro_repo / "plots/images" / name).stat().st_size > 1000, name
    assert read(micro_repo, "metrics/train_ddpm.json")["steps"] == 6
    assert read(micro_repo, "metrics/train_drift.json")["encoder"] == "mae"
    status = sh(micro_repo, "dvc", "status").stdout
    assert "up to date" in status, status


def test_exp_run_pixel_changes_drift_only(micro_repo):
    run = sh(micro_repo, "dvc", "exp", "run", "-S", "encoder=pixel")
    assert "Running stage 'train_ddpm'" not in run.stdout
    assert "Running stage 'train_drift'" in run.stdout
    diff = json.loads(sh(micro_repo, "dvc", "metrics", "diff", "--json").stdout)
    fid_diff = diff["metrics/fid.json"]
    assert any(k.startswith("drift.") for k in fid_diff), fid_diff
    assert not any(k.startswith("ddpm.") for k in fid_diff), fid_diff
    assert diff["metrics/train_drift.json"]["encoder"]["new"] == "pixel"
    shown = sh(micro_repo, "dvc", "exp", "show", "--json").stdout
    assert "pixel" in shown


def test_killed_training_resumes_from_checkpoint(tmp_path):
    params = merge(micro_params(), {"ddpm": {"steps": 400, "checkpoint_every": 2}})
    repo = make_repo(tmp_path, params)
    sh(repo, "dvc", "repro", "prepare")
    proc = subprocess.Popen(["python", "stages/train_ddpm.py"], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and ckpt is None:
        found = list((repo / "checkpoints").glob("train_ddpm-*/last.pt"))
        ckpt = found[0] if found else None
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # no chance to save: only the periodic checkpoint survives
    proc.wait()
    saved = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < saved < 400
    sh(repo, "dvc", "repro", "train_ddpm")
    metrics = read(repo, "metrics/train_ddpm.json")
    assert metrics["resumed_from_step"] >= saved and metrics["steps"] == 400


def test_same_params_same_metrics(micro_repo, tmp_path):
    """A second copy, trained from scratch with its own checkpoints and DVC cache, reproduces every metric
    except wall-clock timings (the baseline's are committed at HEAD of the micro repo)."""
    repo = make_repo(tmp_path, micro_params())
    sh(repo, "dvc", "repro", "fid")
    for rel in ("metrics/train_ddpm.json", "metrics/train_drift.json", "metrics/fid.json"):
        baseline = json.loads(sh(micro_repo, "git", "show", f"HEAD:{rel}").stdout)
        assert without_timing(read(repo, rel)) == without_timing(baseline), rel


def test_two_process_ddp_training_stages(tmp_path):
    """Both training stages under `driftin.launch --nproc-per-node 2`, i.e. torchrun (gloo on CPU): they finish, and rank 0 alone
    writes the outputs."""
    params = merge(micro_params(), {"ddpm": {"nproc_per_node": 2}, "drift": {"nproc_per_node": 2}})
    repo = make_repo(tmp_path, params)
    run = sh(repo, "dvc", "repro", "train_ddpm", "train_drift")
    assert "--nproc-per-node 2" in run.stdout
    for kind in ("ddpm", "drift"):
        metrics = read(repo, f"metrics/train_{kind}.json")
        assert metrics["world_size"] == 2 and metrics["steps"] == params[kind]["steps"]
        assert (repo / f"data/models/{kind}.pt").is_file()
