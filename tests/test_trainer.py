"""The shared training loop: resume reproduces an uninterrupted run; NaN and Ctrl-C leave a usable checkpoint."""
import os
import signal

import pytest
import torch
from torch import nn

from driftin.config import TrainConfig
from driftin.runtime import DistInfo
from driftin.trainer import TrainingDiverged, TrainingInterrupted, checkpoint_path, ema_decay, train

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0)


def cfg(steps=12, every=4, **kw):
    base = dict(steps=steps, batch_size=8, lr=0.05, warmup=2, grad_clip=1.0, ema=0.9, checkpoint_every=every,
                nproc_per_node=1)
    base.update(kw)
    return TrainConfig(**base)


def regression_loss(model, gen):
    x = torch.randn(8, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(8, generator=gen)
    return ((model(x).squeeze(-1) - y) ** 2).mean(), {"aux": 1.0}


def fresh_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.1), nn.Linear(8, 1))


def run(tmp_path, c, loss=regression_loss, name="ckpt"):
    return train(fresh_model(), loss, c, checkpoint=tmp_path / name / "last.pt", seed=3, info=SINGLE,
                 device=torch.device("cpu"), desc="test", log_every=1, progress=False)


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run(tmp_path, cfg(), name="full")
    # An 8-step schedule leaves its checkpoint at step 8 (as a kill after that save would); continue to 12.
    run(tmp_path, cfg(steps=8), name="part")
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    assert state["step"] == 8
    resumed = run(tmp_path, cfg(), name="part")
    assert resumed.resumed_from == 8
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_nan_loss_stops_with_intact_checkpoint(tmp_path):
    def exploding(model, gen):
        loss, stats = regression_loss(model, gen)
        exploding.calls += 1
        return (loss * float("nan") if exploding.calls > 6 else loss), stats
    exploding.calls = 0
    with pytest.raises(TrainingDiverged, match=r"step 6.*intact"):
        run(tmp_path, cfg(), loss=exploding)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigint_writes_checkpoint_then_stops(tmp_path):
    def interrupting(model, gen):
        interrupting.calls += 1
        if interrupting.calls == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return regression_loss(model, gen)
    interrupting.calls = 0
    with pytest.raises(TrainingInterrupted, match="step 3/12"):
        run(tmp_path, cfg(), loss=interrupting)
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["step"] == 3
    resumed = run(tmp_path, cfg())
    assert resumed.resumed_from == 3 and resumed.history[-1]["step"] == 12


def test_checkpoint_path_depends_on_params_and_inputs(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    a = checkpoint_path("train_x", {"lr": 1}, [data], tmp_path)
    assert a == checkpoint_path("train_x", {"lr": 1}, [data], tmp_path)
    assert a != checkpoint_path("train_x", {"lr": 2}, [data], tmp_path)
    data.write_bytes(b"abd")
    assert a != checkpoint_path("train_x", {"lr": 1}, [data], tmp_path)


def test_ema_decay_warms_up_then_caps():
    c = cfg(ema=0.999)
    decays = [ema_decay(s, c) for s in range(0, 20000, 50)]
    assert decays[0] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert decays[-1] == 0.999


def test_collectives_use_the_training_device(monkeypatch):
    """NCCL rejects CPU tensors: the stop-flag all-reduce must run on the training device (here a stand-in)."""
    import driftin.trainer as trainer

    class Reduced(Exception):
        pass

    seen = []

    def fake_all_reduce(t, *args, **kwargs):
        seen.append(t.device)
        raise Reduced  # the meta tensor cannot be read back; the device is what this test checks

    monkeypatch.setattr(trainer.dist, "all_reduce", fake_all_reduce)
    with pytest.raises(Reduced):
        trainer._any_rank(True, DistInfo(rank=0, world_size=2, local_rank=0), torch.device("meta"))
    assert seen == [torch.device("meta")]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_matches_uninterrupted_run(tmp_path):
    """Resume on a GPU: the checkpoint's RNG states load as CPU tensors and the CUDA stream (dropout) resumes."""
    cuda = torch.device("cuda")

    def on_gpu(model, gen):
        x = torch.randn(8, 3, generator=gen).to(cuda)
        y = x @ torch.tensor([1.0, -2.0, 0.5], device=cuda)
        return ((model(x).squeeze(-1) - y) ** 2).mean(), {}

    def go(c, name):
        return train(fresh_model(), on_gpu, c, checkpoint=tmp_path / name / "last.pt", seed=3, info=SINGLE,
                     device=cuda, desc="test", log_every=1, progress=False)

    full = go(cfg(), "full")
    go(cfg(steps=8), "part")
    resumed = go(cfg(), "part")
    assert resumed.resumed_from == 8
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
