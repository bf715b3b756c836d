"""The training fast path (ddpm/drift `fast`, `compile`) on CPU: it trains what the plain path trains, to rounding
(channels-last convolutions and fused AdamW sum in another order), resumes bit-exactly, reports its compile time,
and puts the feature cache on the device only when asked and when it fits."""
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from conftest import assert_same_training

from driftin import feature_cache
from driftin.config import TrainConfig
from driftin.objectives import ddpm_objective
from driftin.runtime import DistInfo
from driftin.trainer import TrainingInterrupted, train
from driftin.unet import build_unet

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0)
IMAGES = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8))


def cfg(fast: bool, compile: bool = False, steps: int = 6) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup=2, grad_clip=1.0, ema=0.9, checkpoint_every=2,
                       nproc_per_node=1, fast=fast, compile=compile, eval_every=0, eval_samples=4)


def unet() -> nn.Module:
    torch.manual_seed(0)
    return build_unet("tiny", 8, dropout=0.0)


def train_ddpm(tmp_path, c: TrainConfig, name: str, interrupt_at: int | None = None):
    loss = ddpm_objective(IMAGES, c.batch_size, CPU, fast=c.fast)
    calls = 0

    def loss_fn(model, gen):
        nonlocal calls
        calls += 1
        if calls == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(model, gen)

    return train(unet(), loss_fn, c, checkpoint=tmp_path / name / "last.pt", seed=1, info=SINGLE, device=CPU,
                 desc="test", log_every=1, progress=False)


def test_fast_path_trains_what_the_plain_path_trains(tmp_path):
    plain, fast = train_ddpm(tmp_path, cfg(False), "plain"), train_ddpm(tmp_path, cfg(True), "fast")
    assert fast.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.history, fast.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    moved = max((a - a0).abs().max() for a, a0 in zip(plain.model.parameters(), unet().parameters()))
    assert moved > 1e-4  # the comparison below is not between two untrained models
    # Adam normalises each update, so parameters with near-zero gradients can differ by a fraction of one step
    # (lr 1e-3); other batches or a missed update would differ by whole steps.
    for a, b in zip(plain.model.parameters(), fast.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    for a, b in zip(plain.ema.parameters(), fast.ema.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    assert plain.compile_s is None and fast.compile_s is None


def test_fast_path_resumes_bit_exactly(tmp_path):
    full = train_ddpm(tmp_path, cfg(True), "full")
    with pytest.raises(TrainingInterrupted):
        train_ddpm(tmp_path, cfg(True), "part", interrupt_at=4)
    resumed = train_ddpm(tmp_path, cfg(True), "part")
    assert resumed.resumed_from == 4
    assert_same_training(full, resumed)


def test_compiled_training_reports_its_compile_time(tmp_path):
    """torch.compile (inductor compiles C++ on CPU, ~10-30 s here) of a dropout-free model: the same training to
    rounding, the first step reported as compile_s."""
    import shutil

    import torch._inductor.config

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 1))

    def loss(model, gen):
        x = torch.randn(8, 3, generator=gen)
        return ((model(x).squeeze(-1) - x.sum(1)) ** 2).mean(), {}

    def go(c, name):
        return train(mlp(), loss, c, checkpoint=tmp_path / name / "last.pt", seed=1, info=SINGLE, device=CPU,
                     desc="test", log_every=1, progress=False)

    torch._dynamo.reset()
    # In-process compilation: on a 2-core machine a worker pool costs more than it saves.
    with torch._inductor.config.patch(compile_threads=1):
        plain, compiled = go(cfg(False), "plain"), go(cfg(False, compile=True), "compiled")
    assert compiled.compile_s is not None and compiled.compile_s > 0
    assert compiled.images_per_s > 0
    for a, b in zip(plain.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_feature_cache_goes_to_the_device_only_when_asked_and_when_it_fits(monkeypatch):
    maps = [torch.zeros(10, 4, 2, 2, dtype=torch.float16), torch.zeros(10, 8, 1, 1, dtype=torch.float16)]
    nbytes = sum(m.numel() * m.element_size() for m in maps)  # 480
    meta = torch.device("meta")  # a stand-in for a GPU: maps can move there without one
    assert feature_cache.place(maps, CPU, fast=True) == (maps, "host")
    assert feature_cache.place(maps, meta, fast=False) == (maps, "host")
    monkeypatch.setattr(feature_cache, "_free_bytes", lambda device: int(nbytes / feature_cache.GPU_CACHE_SHARE))
    placed, where = feature_cache.place(maps, meta, fast=True)
    assert where == "meta" and all(m.device == meta for m in placed)
    monkeypatch.setattr(feature_cache, "_free_bytes", lambda device: int(nbytes / feature_cache.GPU_CACHE_SHARE) - 1)
    assert feature_cache.place(maps, meta, fast=True) == (maps, "host")
