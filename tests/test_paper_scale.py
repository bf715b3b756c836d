"""The README's paper-scale command, run verbatim on CPU except for step and sample counts and batch sizes: CIFAR-10
in its real format (checksums off through params), random-weight files under the real names of ResNet-18, DINOv2
and Inception, base UNet at 32x32, through every stage to `render`, for `dinov2` and then `resnet18`."""
import json
import re
import shlex

import pytest
import yaml

from conftest import REPO, env, make_repo, sh
from standins import fake_cifar10, random_weight_files

pytestmark = pytest.mark.slow

# What the dry run changes, and nothing else: counts, batch sizes and the checksum switch. The compile modes are
# left out because inductor spends 1-2 minutes per shape compiling the base UNet on a CPU; cuda_graphs stays (it
# is skipped on a CPU with its reason recorded, as on a user's CPU machine).
DRY_RUN = {
    "ddpm.steps": "2", "drift.steps": "2", "ddpm.batch_size": "4", "drift.batch_size": "4", "drift.positives": "8",
    "ddpm.checkpoint_every": "1", "drift.checkpoint_every": "1", "encoders.cache_images": "20",
    "drift.conditioning.labels_per_step": "2", "render.columns_per_class": "1",
    "evaluate.sweep.samples": "12", "evaluate.sweep.ddpm": "[1,2]", "evaluate.sweep.drift": "[1,2]",
    "evaluate.num_samples": "12", "evaluate.bootstrap": "2", "evaluate.reference_samples": "16",
    "evaluate.ddim_steps": "2", "evaluate.batch_size": "12", "data.test_samples": "12",
    "benchmark.modes": "[eager_fp32,eager_bf16,cuda_graphs]", "benchmark.batch_sizes": "[1,2]",
    "benchmark.ddim_steps": "2", "benchmark.repeats": "1", "render.grid_samples": "4",
    "data.verify_checksums": "false", "ddpm.eval_samples": "12", "drift.eval_samples": "12",
    # The shipped mae encoder's stage re-runs at 32 px (its data.image_size dep); the preset uses dinov2/resnet18.
    "encoders.mae.steps": "2", "encoders.mae.batch_size": "4", "encoders.mae.train_images": "16",
    "encoders.mae.heldout_images": "8",
}


def readme_command() -> dict[str, str]:
    """The -S overrides of the README's paper-scale `dvc exp run`, in order."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- paper-scale-command.*?```bash\n(.*?)```", text, re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:3] == ["dvc", "exp", "run"], words[:3]
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    assert len(pairs) == words.count("-S") and 2 * len(pairs) == len(words) - 3, words
    return dict(p.split("=", 1) for p in pairs)


def test_readme_command_is_the_paper_preset():
    overrides = readme_command()
    assert overrides["unet.preset"] == "base" and overrides["data.image_size"] == "32"
    assert overrides["data.dataset"] == "cifar10" and overrides["ddpm.steps"] == overrides["drift.steps"] == "50000"


def test_paper_scale_dry_run(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    repo = make_repo(tmp_path / "repo", params)
    fake_cifar10(repo / params["data"]["root"], per_batch=12)
    random_weight_files(tmp_path / "torch", tmp_path / "hf")
    e = {**env(), "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for encoder in ("dinov2", "resnet18"):
        overrides = {**readme_command(), **DRY_RUN, "encoder": encoder}
        args = [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]
        sh(repo, "dvc", "exp", "run", *args, env=e)
        fid = json.loads((repo / "metrics/fid.json").read_text())
        assert fid["extractor"] == "inception" and {"ddpm", "drift", "real_test", "noise"} <= set(fid)
        train = json.loads((repo / "metrics/train_drift.json").read_text())
        assert train["encoder"] == encoder and train["unet_params_m"] > 30
        bench = json.loads((repo / "metrics/benchmark.json").read_text())
        assert set(bench["by_batch"]) == {"bs1", "bs2"}
        assert (repo / "plots/images/grid.png").stat().st_size > 1000
