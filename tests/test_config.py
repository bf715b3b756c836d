"""params.yaml validation: every bad value fails before work starts, naming the key."""
import copy
from pathlib import Path

import pytest
import yaml

from driftin import benchmark, datasets, encoders, runtime, unet
from driftin.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path, raw) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_change(path: str, value):
    raw = copy.deepcopy(DEFAULT)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def test_default_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.encoder in ("mae", "pixel", "resnet18", "dinov2")
    assert p.drift.temperatures == tuple(DEFAULT["drift"]["temperatures"])


@pytest.mark.parametrize("key, value, expected", [
    ("encoder", "dinov3", "encoder"),
    ("encoder", "resnet", "Did you mean 'resnet18'"),
    ("data.dataset", "imagenet", "data.dataset"),
    ("ddpm.steps", 0, "ddpm.steps"),
    ("ddpm.steps", -5, "must be positive"),
    ("drift.lr", "fast", "drift.lr"),
    ("data.image_size", 30, "multiple of 8"),
    ("data.image_size", 24, "does not fit unet.preset"),
    ("unet.preset", "huge", "unet.preset"),
    ("benchmark.modes", ["eager_fp32", "tensorrt"], "benchmark.modes[1]"),
    ("evaluate.bootstrap", 0, "evaluate.bootstrap"),
    ("evaluator.heldout_fraction", 1.5, "evaluator.heldout_fraction"),
    ("evaluator.steps", 2.5, "evaluator.steps"),
    ("drift.ema", 1.0, "drift.ema"),
    ("device", "tpu", "device"),
    ("benchmark.warmup", 0, "benchmark.warmup"),
])
def test_bad_values_name_the_key(tmp_path, key, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_params(write(tmp_path, with_change(key, value)))


def test_batch_not_divisible_by_world_size(tmp_path):
    raw = with_change("drift.nproc_per_node", 3)
    with pytest.raises(ConfigError, match=r"drift.batch_size.*divisible by drift.nproc_per_node"):
        load_params(write(tmp_path, raw))


def test_typo_in_key_suggests_the_right_one(tmp_path):
    raw = copy.deepcopy(DEFAULT)
    raw["ddpm"]["stpes"] = raw["ddpm"].pop("steps")
    with pytest.raises(ConfigError, match=r"unknown key 'ddpm.stpes'.*Did you mean 'ddpm.steps'"):
        load_params(write(tmp_path, raw))


def test_missing_key_is_named(tmp_path):
    raw = copy.deepcopy(DEFAULT)
    del raw["drift"]["positives"]
    with pytest.raises(ConfigError, match="missing key 'drift.positives'"):
        load_params(write(tmp_path, raw))


def test_scientific_notation_strings_are_numbers(tmp_path):
    p = load_params(write(tmp_path, with_change("ddpm.lr", "2e-4")))
    assert p.ddpm.lr == pytest.approx(2e-4)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_too_few_samples_for_precision_recall(tmp_path):
    # torch-fidelity's k-NN precision/recall needs k + 1 images per set; its own message names no key.
    raw = with_change("evaluate.num_samples", 3)
    raw["render"]["grid_samples"] = 2
    with pytest.raises(ConfigError, match=r"'evaluate.num_samples' must be at least 4"):
        load_params(write(tmp_path, raw))


def test_smallest_evaluation_sizes_are_accepted(tmp_path):
    raw = with_change("evaluate.num_samples", 4)
    raw["evaluate"].update(reference_samples=4)
    raw["data"]["test_samples"] = 4
    raw["render"]["grid_samples"] = 4
    assert load_params(write(tmp_path, raw)).evaluate.num_samples == 4


@pytest.mark.parametrize("key, value", [
    *(("encoder", name) for name in encoders.available_encoders()),
    *(("data.dataset", name) for name in datasets.DATASET_NAMES),
    *(("unet.preset", name) for name in unet.UNET_PRESETS),
    *(("device", name) for name in runtime.DEVICES),
    ("benchmark.modes", list(benchmark.MODES)),
])
def test_every_choice_its_owner_exports_is_accepted(tmp_path, key, value):
    # config.py keeps no copy of these lists, so the module that implements a choice is the one that allows it.
    load_params(write(tmp_path, with_change(key, value)))
