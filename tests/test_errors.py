"""The errors a newcomer meets: each stage exits 1 with one readable paragraph saying what to do, no traceback."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, env, merge, micro_params, stage_args
from driftin import cli
from driftin.config import ConfigError


def run_stage(tmp_path: Path, stage: str, params: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages" / stage), *stage_args(stage), "--params", str(path),
                           *args],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize("whole", [
    "/tmp/pytest-of-someone/pytest-1234/test-missing-cifar10-offline0/offline/cifar-10-batches-py",
    "dvc exp run -S device=cpu -S evaluate.num_samples=64",
])
def test_error_paragraph_keeps_paths_and_commands_whole(capsys, whole):
    # The filler puts `whole` across column 110, where the paragraph used to be wrapped.
    def main():
        raise ConfigError(f"{'word ' * 19}{whole} and then more words")

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main)
    assert exit_info.value.code == 1
    assert whole in capsys.readouterr().err


def test_missing_cifar10_offline(tmp_path):
    params = merge(micro_params(), {"data": {"dataset": "cifar10", "root": "offline", "download": False}})
    proc = run_stage(tmp_path, "prepare.py", params)
    assert_clean_failure(proc, "cifar-10-batches-py", str(tmp_path / "offline"))


def test_unknown_encoder(tmp_path):
    proc = run_stage(tmp_path, "cache_features.py", merge(micro_params(), {"encoder": "dino"}))
    assert_clean_failure(proc, "'encoder'", "dinov2")


def test_params_typo(tmp_path):
    params = micro_params()
    params["ddpm"]["learning_rate"] = params["ddpm"].pop("lr")
    proc = run_stage(tmp_path, "train_ddpm.py", params)
    assert_clean_failure(proc, "unknown key 'ddpm.learning_rate'", "'ddpm.lr'")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_on_cpu_machine(tmp_path):
    proc = run_stage(tmp_path, "train_ddpm.py", merge(micro_params(), {"device": "cuda"}))
    assert_clean_failure(proc, "device: cuda", "device: auto")


def test_missing_pretrained_weights_offline(tmp_path, monkeypatch):
    params = merge(micro_params(), {"encoder": "resnet18",
                                    "encoders": {"resnet18": {"weights": str(tmp_path / "nowhere.pth")}}})
    (tmp_path / "data/prepared").mkdir(parents=True)
    np.savez(tmp_path / "data/prepared/train.npz", images=np.zeros((4, 16, 16, 3), np.uint8),
             labels=np.zeros(4, np.int64), class_names=["a"])
    proc = run_stage(tmp_path, "cache_features.py", params)
    assert_clean_failure(proc, "nowhere.pth")


def image_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def test_folder_too_small_for_the_fid_stage(tmp_path):
    # 5 images: a 1-image test split; the fid stage would crash on it after all the training.
    image_folder(tmp_path / "five", 5)
    params = merge(micro_params(), {"data": {"dataset": "folder", "root": "five", "train_samples": None}})
    proc = run_stage(tmp_path, "prepare.py", params)
    assert_clean_failure(proc, str(tmp_path / "five"), "data.root", "or more are needed")
    assert not (tmp_path / "data").exists()


def test_folder_with_a_misnamed_file(tmp_path):
    root = image_folder(tmp_path / "imgs", 60)
    (root / "notes.png").write_text("a text file with an image suffix")
    params = merge(micro_params(), {"data": {"dataset": "folder", "root": "imgs", "train_samples": None}})
    proc = run_stage(tmp_path, "prepare.py", params)
    assert_clean_failure(proc, str(root / "notes.png"))
