"""The training launcher, run as dvc.yaml runs it: params and N are checked before anything starts, a failing
stage's paragraph is the last thing printed (no torchrun traceback), and Ctrl-C reaches the stage, which writes
a checkpoint and exits 130."""
import re
import shlex
import signal
import subprocess
import sys
import time
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, env, merge, micro_params
from test_errors import assert_clean_failure

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def dvc_cmd(stage: str, params: dict) -> list[str]:
    """dvc.yaml's command for `stage` with ${...} filled in from `params` as `dvc repro` does, and its repository
    paths made absolute so that it runs in a temporary directory."""
    cmd = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    cmd = re.sub(r"\$\{([\w.]+)\}", lambda m: str(reduce(dict.__getitem__, m[1].split("."), params)), cmd)
    return [sys.executable if a == "python" else str(REPO / a) if (REPO / a).is_file() else a
            for a in shlex.split(cmd)]


def start(tmp_path: Path, argv: list[str], params: dict) -> subprocess.Popen:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    e = {**env(), "DRIFTIN_CHECKPOINTS": str(tmp_path / "checkpoints")}
    return subprocess.Popen(argv, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(tmp_path: Path, argv: list[str], params: dict) -> subprocess.CompletedProcess:
    proc = start(tmp_path, argv, params)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def with_training_data(tmp_path: Path) -> None:
    (tmp_path / "data/prepared").mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    # Two classes: the micro params train class-conditional generators.
    np.savez(tmp_path / "data/prepared/train.npz", images=images, labels=np.arange(32, dtype=np.int64) % 2,
             class_names=["a", "b"])


@pytest.mark.parametrize("kind, value", [("ddpm", "two"), ("drift", 0)])
def test_bad_nproc_per_node_is_named_before_launch(tmp_path, kind, value):
    params = merge(micro_params(), {kind: {"nproc_per_node": value}})
    proc = run(tmp_path, dvc_cmd(f"train_{kind}", params), params)
    assert_clean_failure(proc, f"'{kind}.nproc_per_node'")


def test_nproc_must_match_the_params_key(tmp_path):
    argv = [sys.executable, "-m", "driftin.launch", "--nproc-per-node", "2", "--key", "ddpm.nproc_per_node", "--",
            str(REPO / "stages/train_ddpm.py")]
    proc = run(tmp_path, argv, micro_params())
    assert_clean_failure(proc, "--nproc-per-node 2", "'ddpm.nproc_per_node' (1)")


@NO_CUDA
@pytest.mark.parametrize("nproc", [1, 2])
def test_stage_error_is_the_last_word(tmp_path, nproc):
    """A failure inside the stage (here: no GPU) ends the output with its own paragraph, under torchrun too."""
    params = merge(micro_params(), {"device": "cuda", "ddpm": {"nproc_per_node": nproc}})
    proc = run(tmp_path, dvc_cmd("train_ddpm", params), params)
    assert_clean_failure(proc, "device: cuda")
    assert "ChildFailedError" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: params.yaml asks for device: cuda")


def test_a_hand_run_training_stage_without_the_reference_names_what_to_do(tmp_path):
    """With the quality curve on (the micro params), a training stage run outside DVC before `reference` used to
    end with only "[Errno 2] No such file or directory: 'data/eval'", naming neither the key nor the way out."""
    with_training_data(tmp_path)
    proc = run(tmp_path, dvc_cmd("train_ddpm", micro_params()), micro_params())
    assert_clean_failure(proc, "ddpm.eval_every", "data/eval/reference.npz", "ddpm.eval_every: 0")


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_reaches_the_stage_which_checkpoints(tmp_path, nproc):
    with_training_data(tmp_path)
    params = merge(micro_params(), {"ddpm": {"steps": 100_000, "checkpoint_every": 1, "nproc_per_node": nproc,
                                             "eval_every": 0}})  # no quality curve: no reference stage needed
    proc = start(tmp_path, dvc_cmd("train_ddpm", params), params)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "checkpoints").glob("*/last.pt")):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to the launcher
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "checkpoint saved" in err, err
    assert "Traceback" not in err, err
