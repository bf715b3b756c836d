"""The shared training loop: resume reproduces an uninterrupted run; NaN and Ctrl-C leave a usable checkpoint; a
finished run is never resumed; checkpoints are keyed by code too and load with weights_only=True."""
import os
import shutil
import signal
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_same_training

from driftin.config import TrainConfig
from driftin.runtime import DistInfo
from driftin.trainer import TrainingDiverged, TrainingInterrupted, checkpoint_path, ema_decay, train

SINGLE = DistInfo(rank=0, world_size=1, local_rank=0)


def cfg(steps=12, every=4, **kw):
    base = dict(steps=steps, batch_size=8, lr=0.05, warmup=2, grad_clip=1.0, ema=0.9, checkpoint_every=every,
                nproc_per_node=1, eval_every=0, eval_samples=4, fast=False,
                compile=False)
    base.update(kw)
    return TrainConfig(**base)


def regression_loss(model, gen):
    x = torch.randn(8, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(8, generator=gen)
    return ((model(x).squeeze(-1) - y) ** 2).mean(), {"aux": 1.0}


def fresh_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.1), nn.Linear(8, 1))


def run(tmp_path, c, loss=regression_loss, name="ckpt", **kw):
    return train(fresh_model(), loss, c, checkpoint=tmp_path / name / "last.pt", seed=3, info=SINGLE,
                 device=torch.device("cpu"), desc="test", log_every=1, progress=False, **kw)


def interrupt_at(step: int):
    """A regression loss that sends this process SIGINT during call `step` (1-based)."""
    def interrupting(model, gen):
        interrupting.calls += 1
        if interrupting.calls == step:
            os.kill(os.getpid(), signal.SIGINT)
        return regression_loss(model, gen)
    interrupting.calls = 0
    return interrupting


def test_resume_matches_uninterrupted_run(tmp_path):
    full = run(tmp_path, cfg(), name="full")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, cfg(), loss=interrupt_at(8), name="part")
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert state["step"] == 8
    resumed = run(tmp_path, cfg(), name="part")
    assert resumed.resumed_from == 8
    assert_same_training(full, resumed)


def test_nan_loss_stops_with_intact_checkpoint(tmp_path):
    def exploding(model, gen):
        loss, stats = regression_loss(model, gen)
        exploding.calls += 1
        return (loss * float("nan") if exploding.calls > 6 else loss), stats
    exploding.calls = 0
    with pytest.raises(TrainingDiverged, match=r"step 6.*intact"):
        run(tmp_path, cfg(), loss=exploding)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigint_writes_checkpoint_then_stops(tmp_path):
    with pytest.raises(TrainingInterrupted, match="step 3/12"):
        run(tmp_path, cfg(), loss=interrupt_at(3))
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["step"] == 3
    resumed = run(tmp_path, cfg())
    assert resumed.resumed_from == 3 and resumed.history[-1]["step"] == 12


def test_checkpoint_path_depends_on_params_inputs_and_code(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    a = checkpoint_path("train_x", {"lr": 1}, [data], tmp_path, code="c1")
    assert a == checkpoint_path("train_x", {"lr": 1}, [data], tmp_path, code="c1")
    assert a != checkpoint_path("train_x", {"lr": 2}, [data], tmp_path, code="c1")
    assert a != checkpoint_path("train_x", {"lr": 1}, [data], tmp_path, code="c2")
    data.write_bytes(b"abd")
    assert a != checkpoint_path("train_x", {"lr": 1}, [data], tmp_path, code="c1")


def test_train_ddpm_code_digest_covers_modules_it_imports_indirectly(tmp_path):
    """The code part of train_ddpm's checkpoint key changes when runtime.py changes (imported through cli and
    training_stage, never by name in the script); a copy of the package keeps the real source untouched."""
    from driftin.closure import code_digest

    repo = Path(__file__).resolve().parents[1]
    pkg = tmp_path / "driftin"
    shutil.copytree(repo / "src" / "driftin", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    script = repo / "stages" / "train_ddpm.py"
    before = code_digest(script, pkg)
    (pkg / "runtime.py").write_text((pkg / "runtime.py").read_text() + "\n# edited\n")
    assert code_digest(script, pkg) != before


def test_finished_run_leaves_no_finished_checkpoint(tmp_path):
    """The last step's state goes to the stage's outputs only: the checkpoint on disk is the last periodic one."""
    result = run(tmp_path, cfg(steps=12, every=4))
    assert result.resumed_from == 0
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["step"] == 8


def test_finished_checkpoint_is_never_resumed(tmp_path):
    """A checkpoint at the final step (a run killed between its last step and its outputs) trains again from 0
    rather than reporting a run of 0 steps at 0 img/s."""
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, cfg(), loss=interrupt_at(8))
    result = run(tmp_path, cfg(steps=8))
    assert result.resumed_from == 0 and result.images_per_s > 0
    assert [r["step"] for r in result.history] == list(range(1, 9))


def test_checkpoint_loads_with_weights_only(tmp_path):
    """Model, EMA, optimizer state, every rank's RNG states and the history: all plain types."""
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, cfg(), loss=interrupt_at(5))
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert set(state) == {"model", "ema", "opt", "rng", "history", "step", "elapsed_s", "evals",
                          "eval_seconds"}
    assert state["rng"][0]["gen"].dtype == torch.uint8 and state["opt"]["state"]


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

    def on_gpu(model, gen, interrupt_at=None):
        on_gpu.calls += 1
        if on_gpu.calls == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        x = torch.randn(8, 3, generator=gen).to(cuda)
        y = x @ torch.tensor([1.0, -2.0, 0.5], device=cuda)
        return ((model(x).squeeze(-1) - y) ** 2).mean(), {}

    def go(name, interrupt_at=None):
        on_gpu.calls = 0
        loss = lambda model, gen: on_gpu(model, gen, interrupt_at)  # noqa: E731
        return train(fresh_model(), loss, cfg(), checkpoint=tmp_path / name / "last.pt", seed=3, info=SINGLE,
                     device=cuda, desc="test", log_every=1, progress=False)

    full = go("full")
    with pytest.raises(TrainingInterrupted):
        go("part", interrupt_at=8)
    resumed = go("part")
    assert resumed.resumed_from == 8
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def noisy_evaluation(ema):
    """A curve point that draws from torch's global RNG (as a sampler with dropout or a bootstrap might) and
    reads the EMA: the loop must keep it away from the training streams."""
    torch.randn(1000)
    return {"fid": float(sum(p.abs().sum() for p in ema.parameters()))}


def test_quality_curve_points_at_every_eval_step_and_the_last(tmp_path):
    logged = []
    result = run(tmp_path, cfg(steps=10, eval_every=4), evaluate=noisy_evaluation,
                 on_log=lambda kind, row: logged.append((kind, row["step"])))
    assert [r["step"] for r in result.evals] == [4, 8, 10]
    # the last point judges the returned EMA weights
    assert result.evals[-1]["fid"] == noisy_evaluation(result.ema)["fid"]
    assert [s for k, s in logged if k == "eval"] == [4, 8, 10]
    assert [s for k, s in logged if k == "train"] == list(range(1, 11))
    secs = [r["train_seconds"] for r in result.evals]
    assert secs == sorted(secs) and result.eval_seconds > 0
    assert all(r["eval_seconds"] >= 0 for r in result.evals)


def test_the_quality_curve_does_not_change_what_is_trained(tmp_path):
    """Evaluating draws from the global RNG (dropout's stream here): without the forked RNG the weights of a run
    with the curve would differ from one without it."""
    plain = run(tmp_path, cfg(steps=10), name="plain")
    judged = run(tmp_path, cfg(steps=10, eval_every=3), name="judged", evaluate=noisy_evaluation)
    assert len(judged.evals) == 4
    for a, b in zip(plain.model.parameters(), judged.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in judged.history]


def test_evaluation_time_is_not_training_time(tmp_path, monkeypatch):
    """A fake clock (a wall clock would make this flaky on a busy machine): each reading advances it 1 ms, and
    each evaluation 100 s. None of the 300 s may reach the training seconds."""
    import driftin.trainer as trainer_module
    clock = [0.0]

    def perf_counter():
        clock[0] += 0.001
        return clock[0]

    def slow(ema):
        clock[0] += 100.0
        return {"fid": 1.0}
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    result = run(tmp_path, cfg(steps=6, eval_every=2), evaluate=slow)
    assert result.eval_seconds == pytest.approx(300, abs=0.1)
    assert result.train_seconds < 1
    assert [r["eval_seconds"] for r in result.evals] == pytest.approx([100] * 3, abs=0.1)
    assert result.evals[-1]["train_seconds"] <= result.train_seconds


def test_resume_continues_the_curve_and_replays_it_to_the_log(tmp_path):
    full = run(tmp_path, cfg(steps=12, eval_every=4), name="full", evaluate=noisy_evaluation)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path, cfg(steps=12, eval_every=4), loss=interrupt_at(9), name="part", evaluate=noisy_evaluation)
    logged = []
    resumed = run(tmp_path, cfg(steps=12, eval_every=4), name="part", evaluate=noisy_evaluation,
                  on_log=lambda kind, row: logged.append((kind, row["step"])))
    assert resumed.resumed_from == 9
    assert [r["step"] for r in resumed.evals] == [4, 8, 12]
    assert [r["fid"] for r in resumed.evals] == [r["fid"] for r in full.evals]
    # the checkpoint's rows first (so a fresh DVCLive folder holds the whole run), then the new ones
    assert [s for k, s in logged if k == "eval"] == [4, 8, 12]
    assert [s for k, s in logged if k == "train"] == list(range(1, 13))
