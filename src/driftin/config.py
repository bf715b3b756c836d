"""params.yaml -> typed, validated config objects.

Every default lives in params.yaml; these dataclasses have none, so a missing or misspelt key is an error that
names the key (with a suggestion) before any work starts. This module loads and types; each section's rules
(valid choices, ranges, cross-checks) live in the module that owns them, and `validate` dispatches to those.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .evaluator import EvaluatorParams
from .rules import ConfigError  # noqa: F401 - re-exported: stages and callers catch config.ConfigError


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    root: str
    download: bool
    verify_checksums: bool
    image_size: int
    train_samples: int | None
    test_samples: int


@dataclass(frozen=True)
class UNetParams:
    preset: str
    dropout: float


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by DDPM and drift training."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    grad_clip: float
    ema: float
    checkpoint_every: int
    nproc_per_node: int
    eval_every: int  # in-training evaluation (quality curves) every this many steps; 0 = off
    eval_samples: int  # samples per in-training evaluation
    fast: bool
    compile: bool


@dataclass(frozen=True)
class DDPMConfig(TrainConfig):
    p_uncond: float


@dataclass(frozen=True)
class ConditioningConfig:
    """The drift section's class-conditioning keys (used when `conditional` is true)."""

    labels_per_step: int
    negatives: int
    alpha_max: float
    alpha_power: float


@dataclass(frozen=True)
class DriftConfig(TrainConfig):
    positives: int
    temperatures: tuple[float, ...]
    tau_times_c: bool
    affinity_floor: float
    conditioning: ConditioningConfig


@dataclass(frozen=True)
class MAEParams:
    seed: int
    train_images: int
    heldout_images: int
    steps: int
    batch_size: int
    lr: float
    mask_ratio: float
    patch_size: int


@dataclass(frozen=True)
class PretrainedParams:
    weights: str | None


@dataclass(frozen=True)
class DinoParams(PretrainedParams):
    resize: int


@dataclass(frozen=True)
class EncodersConfig:
    cache_images: int
    feature_set: str
    mae: MAEParams
    resnet18: PretrainedParams
    dinov2: DinoParams


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance of the conditional generators at sampling: DDPM's CFG scale, the drifting generator's alpha."""

    ddpm: float
    drift: float


@dataclass(frozen=True)
class SweepConfig:
    samples: int
    ddpm: tuple[float, ...]
    drift: tuple[float, ...]


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int
    ddim_steps: int
    reference_samples: int
    batch_size: int
    bootstrap: int
    inception_weights: str | None
    guidance: GuidanceConfig
    sweep: SweepConfig


@dataclass(frozen=True)
class BenchmarkConfig:
    modes: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    ddim_steps: int
    repeats: int
    warmup: int


@dataclass(frozen=True)
class RenderConfig:
    grid_samples: int
    columns_per_class: int


@dataclass(frozen=True)
class Params:
    seed: int
    encoder: str
    conditional: bool
    device: str
    data: DataConfig
    unet: UNetParams
    ddpm: DDPMConfig
    drift: DriftConfig
    encoders: EncodersConfig
    evaluate: EvaluateConfig
    evaluator: EvaluatorParams
    benchmark: BenchmarkConfig
    render: RenderConfig


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ConfigError naming the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found. Run the stage from the repository root, where params.yaml lives.")
    with path.open() as f:
        raw = yaml.safe_load(f)
    params = _build(Params, raw, "")
    validate(params)
    return params


def as_dict(obj: Any) -> Any:
    """Config object -> plain dict (for hashing and checkpoint metadata)."""
    return dataclasses.asdict(obj)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        missing = [f for f in fields if f not in raw]
        close = difflib.get_close_matches(str(key), missing or fields, n=1) or missing[:1]
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys here: {', '.join(fields)}."
        raise ConfigError(f"params.yaml: unknown key '{prefix}{key}'.{hint}")
    values = {}
    for name in fields:
        if name not in raw:
            raise ConfigError(f"params.yaml: missing key '{prefix}{name}'.")
        values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}")
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"params.yaml: '{key}' must be a non-empty list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"params.yaml: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params.yaml: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads 5e-4 (no dot) as a string; accept it, since that spelling is natural for learning rates.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params.yaml: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"params.yaml: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def validate(p: Params) -> None:
    """Hand each section to the module that owns its rules; each raises ConfigError naming the key.

    Imported here rather than at the top: several owners import this module's types (an import cycle otherwise).
    """
    from . import (benchmark, conditioning, datasets, ddpm, drift, encoders, evaluator, feature_cache, fidelity, mae,
                   render, runtime, trainer, unet)

    runtime.validate(seed=p.seed, device=p.device)
    encoders.validate(p.encoder, p.encoders)
    datasets.validate(p.data)
    unet.validate(p.unet, p.data.image_size)
    for section in ("ddpm", "drift"):
        trainer.validate(getattr(p, section), section)
    drift.validate(p.drift)
    conditioning.validate(p.conditional, p.drift, p.ddpm, p.evaluate)
    feature_cache.validate(p.encoders.cache_images, p.drift.positives)
    mae.validate(p.encoders.mae, p.data.image_size)
    fidelity.validate(p.evaluate, p.data.test_samples)
    ddpm.validate_ddim_steps(p.evaluate.ddim_steps, "evaluate.ddim_steps")
    try:  # the evaluator section checks itself (EvaluatorParams.check)
        p.evaluator.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    benchmark.validate(p.benchmark)
    render.validate(p.render, p.evaluate.num_samples)
