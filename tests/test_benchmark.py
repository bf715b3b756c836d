import shutil

import pytest
import torch
import torch._inductor.config
from torch import nn

from driftin import benchmark
from driftin.benchmark import (ROW_KEYS, benchmark_matrix, count_nfe, device_info, fixed_noise, one_step_sampler,
                               summarize)

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """model(x, t) -> x' with a timestep embedding, like the shared UNet."""

    def __init__(self, fail_under_autocast: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Embedding(10, 3)
        self.fail_under_autocast = fail_under_autocast

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.fail_under_autocast and torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no bf16 here\nsecond line of the traceback message")
        return self.conv(x) + self.emb(t)[:, :, None, None]  # (B,3,H,W)


@pytest.fixture(autouse=True)
def native_bf16(monkeypatch):
    """Exercise the eager_bf16 mode whatever this CPU's instruction set (the skip has its own test)."""
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: True)


def three_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A DDIM-shaped loop: several network evaluations per sample."""
    for i in (2, 1, 0):
        x = x - 0.1 * model(x, torch.full((x.shape[0],), i, dtype=torch.long, device=x.device))
    return x


GENERATORS = {"ddpm": three_step, "drift": one_step_sampler(9)}


def run(model: nn.Module, modes: list[str], batch_sizes: list[int]) -> list[dict]:
    return benchmark_matrix(model, GENERATORS, make_noise=fixed_noise((3, 8, 8), seed=0), modes=modes,
                            batch_sizes=batch_sizes, repeats=3, warmup=1, device=CPU, progress=False)


def test_matrix_has_a_row_per_combination_and_skips_cuda_graphs_on_cpu():
    modes, batches = ["eager_fp32", "eager_bf16", "cuda_graphs"], [1, 4]
    rows = run(TinyNet(), modes, batches)
    assert [(r["model"], r["mode"], r["batch_size"]) for r in rows] == [
        (g, m, b) for m in modes for g in GENERATORS for b in batches]
    assert all(tuple(r) == ROW_KEYS for r in rows)
    for r in rows:
        assert r["nfe"] == {"ddpm": 3, "drift": 1}[r["model"]]
        if r["mode"] == "cuda_graphs":
            assert r["status"] == "skipped" and "CUDA" in r["reason"] and r["images_per_s"] is None
            continue
        assert r["status"] == "ok", r
        assert 0 < r["latency_ms_min"] <= r["latency_ms_median"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["latency_ms_median"] / 1e3))
        assert r["compile_s"] is None


def test_failing_mode_is_recorded_with_first_line_of_error():
    rows = run(TinyNet(fail_under_autocast=True), ["eager_fp32", "eager_bf16"], [2])
    status = {(r["model"], r["mode"]): (r["status"], r["reason"]) for r in rows}
    assert status["drift", "eager_fp32"] == ("ok", "")
    assert status["drift", "eager_bf16"] == ("failed", "RuntimeError: no bf16 here")
    assert status["ddpm", "eager_bf16"][0] == "failed"


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="unknown modes"):
        run(TinyNet(), ["eager_fp16"], [1])
    with pytest.raises(ValueError, match="repeats"):
        benchmark_matrix(TinyNet(), GENERATORS, make_noise=fixed_noise((3, 8, 8)), modes=["eager_fp32"],
                         batch_sizes=[1], repeats=0, warmup=1, device=CPU, progress=False)


def test_fixed_noise_is_reproducible_and_nfe_is_counted():
    make = fixed_noise((3, 4, 4), seed=7)
    assert torch.equal(make(2), make(2))
    assert not torch.equal(make(2), fixed_noise((3, 4, 4), seed=8)(2))
    assert count_nfe(TinyNet(), three_step, make(2)) == 3


def test_classifier_free_guidance_counts_two_evaluations_per_ddim_step():
    """CFG runs the conditional and unconditional epsilon as one call on 2B rows: counting calls would report
    half the work. The conditional sampler of the benchmark and sample stages is counted by rows."""
    from driftin.benchmark import ddim_sampler
    from driftin.unet import build_unet

    net = build_unet("tiny", 8, num_classes=3)
    z = fixed_noise((3, 8, 8), seed=0)(4)
    assert count_nfe(net, ddim_sampler(5, 3, guidance=2.0), z) == 10
    assert count_nfe(net, ddim_sampler(5, 3, guidance=1.0), z) == 5
    assert count_nfe(build_unet("tiny", 8, num_classes=3, alpha_cond=True), one_step_sampler(0, 3, 2.0), z) == 1


def _ok(model: str, mode: str, batch: int, ips: float) -> dict:
    return {"model": model, "mode": mode, "batch_size": batch, "status": "ok", "reason": "",
            "latency_ms_median": batch / ips * 1e3, "images_per_s": ips}


def test_summarize_ratios_best_mode_and_speedups():
    rows = [_ok("drift", "eager_fp32", 1, 100.0), _ok("drift", "compile", 1, 400.0),
            _ok("ddpm", "eager_fp32", 1, 2.0), _ok("ddpm", "compile", 1, 4.0),
            _ok("drift", "eager_fp32", 8, 800.0), _ok("ddpm", "eager_fp32", 8, 10.0),
            {"model": "drift", "mode": "cuda_graphs", "batch_size": 1, "status": "skipped", "reason": "cpu"}]
    s = summarize(rows)
    bs1 = s["by_batch"]["bs1"]
    assert bs1["ratio"] == {"eager_fp32": 50.0, "compile": 100.0}
    assert bs1["best"] == {"drift_mode": "compile", "drift_images_per_s": 400.0, "ddpm_mode": "compile",
                           "ddpm_images_per_s": 4.0, "ratio": 100.0}
    assert s["by_batch"]["bs8"]["ratio"] == {"eager_fp32": 80.0}
    assert s["speedup_vs_eager_fp32"]["drift"]["bs1"] == {"compile": 4.0}
    assert s["speedup_vs_eager_fp32"]["ddpm"]["bs8"] == {}
    assert s["latency_ms_batch1"]["ddpm"] == {"eager_fp32": 500.0, "compile": 250.0}
    assert s["counts"] == {"ok": 6, "skipped": 1, "failed": 0}


def test_device_info_cpu():
    info = device_info(CPU)
    assert info["device_type"] == "cpu" and info["torch"] == torch.__version__ and info["cpu_count"] >= 1


@pytest.mark.slow
def test_compile_mode_on_one_tiny_case():
    """torch.compile (inductor) compiles C++ on CPU: ~10 s warm, ~25 s with a cold cache."""
    # In-process compilation: on a 2-core machine a worker pool costs more than it saves. config.patch, not
    # monkeypatch: monkeypatch's undo left inductor's config without compile_threads for later tests.
    with torch._inductor.config.patch(compile_threads=1):
        rows = benchmark_matrix(TinyNet(), {"drift": one_step_sampler(9)}, make_noise=fixed_noise((3, 8, 8)),
                                modes=["compile"], batch_sizes=[1], repeats=2, warmup=1, device=CPU, progress=False)
    (row,) = rows
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        assert row["status"] == "skipped" and "C++ compiler" in row["reason"]
        return
    assert row["status"] == "ok", row["reason"]
    assert row["compile_s"] > 0 and row["latency_ms_median"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_modes_run_on_gpu():
    rows = benchmark_matrix(TinyNet(), GENERATORS, make_noise=fixed_noise((3, 8, 8)), modes=["eager_fp32", "cuda_graphs"],
                            batch_sizes=[2], repeats=3, warmup=3, device=torch.device("cuda"), progress=False)
    assert all(r["status"] == "ok" for r in rows), rows


def test_bf16_is_skipped_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: False)
    reason = benchmark.mode_unavailable_reason("eager_bf16", torch.device("cpu"))
    assert reason is not None and "no native bf16" in reason
    assert benchmark.mode_unavailable_reason("eager_fp32", torch.device("cpu")) is None


def test_one_step_sampler_times_only_the_network(monkeypatch):
    """The benchmark's drift sampler makes t (and labels, alpha) on the first call per batch size only: a timed
    call runs no tensor factory outside the network and passes the same tensors again."""
    seen = []

    def network(z, *inputs):
        seen.append(inputs)
        return z

    for sample in (one_step_sampler(9), one_step_sampler(0, 3, 2.0)):
        seen.clear()
        z = fixed_noise((3, 8, 8))(4)
        sample(network, z)
        calls = []
        for name in ("full", "arange", "tensor", "as_tensor", "zeros", "ones", "empty"):
            real = getattr(torch, name)
            monkeypatch.setattr(torch, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
        sample(network, z)
        monkeypatch.undo()
        assert calls == []
        assert all(a is b for a, b in zip(seen[0], seen[1])) and len(seen[1]) in (1, 3)
    assert torch.equal(seen[0][1], torch.arange(4) % 3) and torch.equal(seen[0][2], torch.full((4,), 2.0))


def test_bf16_mode_runs_true_bf16_close_to_fp32():
    """`bf16`: a bf16 channels-last copy of the weights and bf16 noise (the fixture stands in native bf16); the
    caller's model keeps fp32 weights, and the output stays near fp32's."""
    from driftin.benchmark import as_bf16, ddim_sampler
    from driftin.unet import build_unet

    torch.manual_seed(0)
    net = build_unet("tiny", 8, dropout=0.0).eval().requires_grad_(False)
    z = fixed_noise((3, 8, 8))(2)
    net16, z16 = as_bf16(net, z)
    assert next(net.parameters()).dtype == torch.float32
    assert next(net16.parameters()).dtype == torch.bfloat16 and z16.dtype == torch.bfloat16
    assert net16.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for sample, tol in ((one_step_sampler(0), 0.05), (ddim_sampler(2), 0.1)):
            ref, out = sample(net, z), sample(net16, z16)
            assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
            assert (out.float() - ref).abs().max() < tol * max(1.0, ref.abs().max())
    rows = benchmark_matrix(net, {"drift": one_step_sampler(0), "ddpm": ddim_sampler(2)},
                            make_noise=fixed_noise((3, 8, 8)), modes=["bf16", "bf16_cuda_graphs"], batch_sizes=[1],
                            repeats=1, warmup=1, device=CPU, progress=False)
    assert [(r["mode"], r["status"]) for r in rows] == [("bf16", "ok")] * 2 + [("bf16_cuda_graphs", "skipped")] * 2
    assert next(net.parameters()).dtype == torch.float32


def test_true_bf16_modes_are_skipped_without_native_bf16(monkeypatch):
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: False)
    for mode in ("bf16", "eager_bf16"):
        assert "no native bf16" in benchmark.mode_unavailable_reason(mode, CPU)
