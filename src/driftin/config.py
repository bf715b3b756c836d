"""params.yaml -> typed, validated config objects.

Every default lives in params.yaml; these dataclasses have none, so a missing or misspelt key is an error that
names the key (with a suggestion) before any work starts.
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
from .unet import UNET_PRESETS
from .unet import _validate as check_unet_size

DATASETS = ("shapes", "cifar10", "folder")
ENCODER_NAMES = ("mae", "pixel", "resnet18", "dinov2")
UNET_PRESET_NAMES = ("base", "small", "tiny")
BENCH_MODES = ("eager_fp32", "eager_bf16", "compile", "compile_max_autotune", "cuda_graphs")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A params.yaml value is missing, misspelt or impossible; the message names the key."""


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


@dataclass(frozen=True)
class DDPMConfig(TrainConfig):
    pass


@dataclass(frozen=True)
class DriftConfig(TrainConfig):
    positives: int
    temperatures: tuple[float, ...]
    tau_times_c: bool
    affinity_floor: float


@dataclass(frozen=True)
class MAEParams:
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
    mae: MAEParams
    resnet18: PretrainedParams
    dinov2: DinoParams


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int
    ddim_steps: int
    reference_samples: int
    batch_size: int
    bootstrap: int
    inception_weights: str | None


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


@dataclass(frozen=True)
class Params:
    seed: int
    encoder: str
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


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: '{key}' {msg}")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"params.yaml: '{key}' is '{value}', which is not one of: {', '.join(choices)}.{hint}")


def _positive(value: float, key: str) -> None:
    _require(value > 0, key, f"must be positive, got {value}")


def _validate_train(cfg: TrainConfig, section: str) -> None:
    for name in ("steps", "batch_size", "lr", "checkpoint_every", "nproc_per_node"):
        _positive(getattr(cfg, name), f"{section}.{name}")
    _require(cfg.warmup >= 0, f"{section}.warmup", f"must be >= 0, got {cfg.warmup}")
    _require(cfg.grad_clip > 0, f"{section}.grad_clip", f"must be positive, got {cfg.grad_clip}")
    _require(0 <= cfg.ema < 1, f"{section}.ema", f"must be in [0, 1), got {cfg.ema}")
    _require(
        cfg.batch_size % cfg.nproc_per_node == 0,
        f"{section}.batch_size",
        f"({cfg.batch_size}) must be divisible by {section}.nproc_per_node ({cfg.nproc_per_node}): "
        "every rank takes an equal share of the global batch.",
    )


def validate(p: Params) -> None:
    """Cross-field checks; everything that can be known before work starts."""
    _choice(p.encoder, ENCODER_NAMES, "encoder")
    _choice(p.device, DEVICES, "device")
    _require(p.seed >= 0, "seed", f"must be >= 0, got {p.seed}")

    d = p.data
    _choice(d.dataset, DATASETS, "data.dataset")
    _positive(d.image_size, "data.image_size")
    _require(d.image_size % 8 == 0, "data.image_size", f"must be a multiple of 8 (the UNet halves it), got {d.image_size}")
    if d.train_samples is not None:
        _positive(d.train_samples, "data.train_samples")
    _require(
        d.dataset != "shapes" or d.train_samples is not None,
        "data.train_samples",
        "must be set for the procedural 'shapes' dataset (how many images to render)",
    )
    _positive(d.test_samples, "data.test_samples")

    _choice(p.unet.preset, UNET_PRESET_NAMES, "unet.preset")
    try:  # the preset must be able to halve the image and meet its attention resolutions
        check_unet_size(UNET_PRESETS[p.unet.preset], d.image_size)
    except ValueError as e:
        raise ConfigError(f"params.yaml: 'data.image_size' ({d.image_size}) does not fit unet.preset "
                          f"'{p.unet.preset}': {e}") from None
    _require(0 <= p.unet.dropout < 1, "unet.dropout", f"must be in [0, 1), got {p.unet.dropout}")

    _validate_train(p.ddpm, "ddpm")
    _validate_train(p.drift, "drift")
    _positive(p.drift.positives, "drift.positives")
    _require(
        p.drift.positives % p.drift.nproc_per_node == 0,
        "drift.positives",
        f"({p.drift.positives}) must be divisible by drift.nproc_per_node ({p.drift.nproc_per_node})",
    )
    _require(p.drift.batch_size >= 2, "drift.batch_size", "must be >= 2: each sample is a negative for the others")
    for i, tau in enumerate(p.drift.temperatures):
        _positive(tau, f"drift.temperatures[{i}]")
    _require(p.drift.affinity_floor >= 0, "drift.affinity_floor", "must be >= 0")

    e = p.encoders
    _positive(e.cache_images, "encoders.cache_images")
    _require(
        e.cache_images >= p.drift.positives // 2,
        "encoders.cache_images",
        f"({e.cache_images}) is too small to draw drift.positives ({p.drift.positives}) per step "
        "(the cache holds each image and its flip)",
    )
    for name in ("steps", "batch_size", "lr", "patch_size"):
        _positive(getattr(e.mae, name), f"encoders.mae.{name}")
    _require(0 < e.mae.mask_ratio < 1, "encoders.mae.mask_ratio", "must be in (0, 1)")
    _require(d.image_size % e.mae.patch_size == 0, "encoders.mae.patch_size", "must divide data.image_size")
    _require(e.dinov2.resize % 14 == 0, "encoders.dinov2.resize", "must be a multiple of the ViT patch size 14")

    ev = p.evaluate
    for name in ("num_samples", "ddim_steps", "reference_samples", "batch_size", "bootstrap"):
        _positive(getattr(ev, name), f"evaluate.{name}")
    _require(ev.ddim_steps <= 1000, "evaluate.ddim_steps", "must be <= 1000 (the DDPM training steps T)")
    _require(ev.num_samples >= 2 and ev.reference_samples >= 2, "evaluate.num_samples",
             "and evaluate.reference_samples must be >= 2 (covariances)")
    try:
        p.evaluator.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None

    b = p.benchmark
    for i, m in enumerate(b.modes):
        _choice(m, BENCH_MODES, f"benchmark.modes[{i}]")
    for i, bs in enumerate(b.batch_sizes):
        _positive(bs, f"benchmark.batch_sizes[{i}]")
    for name in ("ddim_steps", "repeats"):
        _positive(getattr(b, name), f"benchmark.{name}")
    _require(b.ddim_steps <= 1000, "benchmark.ddim_steps", "must be <= 1000 (the DDPM training steps T)")
    _require(b.warmup >= 0, "benchmark.warmup", "must be >= 0")
    _positive(p.render.grid_samples, "render.grid_samples")
    _require(
        p.render.grid_samples <= ev.num_samples,
        "render.grid_samples",
        f"must not exceed evaluate.num_samples ({ev.num_samples}): grids reuse the FID samples",
    )
