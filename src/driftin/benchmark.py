"""Inference benchmark: generators x execution modes x batch sizes.

A *generator* is a sampler applied to the shared UNet: DDPM runs 50 DDIM steps, the drifting model one
forward pass. Modes wrap the *module* (autocast, torch.compile, CUDA graphs), so the same sampler code is
timed under every mode. Timing follows nanoGPT's bench.py: warm up, synchronise, time only the calls.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .ddpm import ddim_sample, validate_ddim_steps
from .rules import choice, positive, require

Sampler = Callable[[nn.Module, Tensor], Tensor]  # (model, x_T [B,3,H,W]) -> x_0 [B,3,H,W]

MODES = ("eager_fp32", "eager_bf16", "bf16", "compile", "compile_max_autotune", "cuda_graphs", "bf16_cuda_graphs")
COMPILED_MODES = {"compile": "default", "compile_max_autotune": "max-autotune", "cuda_graphs": "reduce-overhead",
                  "bf16_cuda_graphs": "reduce-overhead"}
# eager_bf16 is autocast: fp32 weights, cast to bf16 op by op on every call. These modes are true bf16: a bf16,
# channels-last copy of the weights and bf16 channels-last noise, made once outside the timing; DDIM then runs
# in the noise's dtype (ddim_sample).
BF16_MODES = ("bf16", "bf16_cuda_graphs")
ROW_KEYS = ("model", "mode", "batch_size", "status", "reason", "latency_ms_median", "latency_ms_min",
            "images_per_s", "compile_s", "nfe")


def validate(bench) -> None:
    """The `benchmark` section (a config.BenchmarkConfig)."""
    for i, mode in enumerate(bench.modes):
        choice(mode, MODES, f"benchmark.modes[{i}]")
    for i, batch in enumerate(bench.batch_sizes):
        positive(batch, f"benchmark.batch_sizes[{i}]")
    validate_ddim_steps(bench.ddim_steps, "benchmark.ddim_steps")
    positive(bench.repeats, "benchmark.repeats")
    # The first call is always a warm-up (in compiled modes it compiles, and is reported as compile_s), so the
    # count includes it: there is no measurement without one.
    require(bench.warmup >= 1, "benchmark.warmup",
            f"must be >= 1, got {bench.warmup}: it counts the first, untimed call (the compile in compiled modes)")


def one_step_sampler(t_fixed: int, num_classes: int = 0, alpha: float = 1.0) -> Sampler:
    """Drifting generator: x_0 = model(noise, t_fixed), a single network evaluation; a conditional one
    (num_classes K) also takes the labels i mod K and the guidance strength alpha."""

    inputs: dict[tuple[int, torch.device], tuple[Tensor, ...]] = {}

    def sample(model: nn.Module, z: Tensor) -> Tensor:
        # t (and labels, alpha) built on the first call per batch size and reused, so a timed call is the network
        # alone: no tensor is made or copied to the device outside it (generators.OneStepInputs).
        key = (z.shape[0], z.device)
        if key not in inputs:
            t = torch.full((z.shape[0],), t_fixed, dtype=torch.long, device=z.device)  # (B,)
            labels = torch.arange(z.shape[0], device=z.device) % num_classes if num_classes else None  # (B,)
            a = torch.full((z.shape[0],), alpha, dtype=torch.float32, device=z.device) if num_classes else None
            inputs[key] = (t,) if not num_classes else (t, labels, a)
        return model(z, *inputs[key])

    return sample


def ddim_sampler(num_steps: int, num_classes: int = 0, guidance: float = 1.0) -> Sampler:
    """DDPM generator: DDIM with num_steps steps; a conditional one (num_classes K) samples the labels i mod K
    with classifier-free guidance `guidance` (two network evaluations per step unless it is 1)."""

    def sample(model: nn.Module, x_T: Tensor) -> Tensor:
        if not num_classes:
            return ddim_sample(model, x_T, num_steps=num_steps)
        labels = torch.arange(x_T.shape[0], device=x_T.device) % num_classes
        return ddim_sample(model, x_T, num_steps=num_steps, labels=labels, guidance=guidance,
                           null_label=num_classes if guidance != 1 else None)

    return sample


def fixed_noise(chw: tuple[int, int, int], seed: int = 0) -> Callable[[int], Tensor]:
    """make_noise(batch) -> [B,C,H,W] float32 on CPU; the same seed gives the same noise for every model/mode."""

    def make(batch: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *chw), generator=g)

    return make


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX) rather than emulating it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def mode_unavailable_reason(mode: str, device: torch.device) -> str | None:
    """Why `mode` cannot run on `device`, or None if it can be attempted."""
    if mode in ("cuda_graphs", "bf16_cuda_graphs") and device.type != "cuda":
        return f"CUDA graphs need a CUDA device (device is {device.type})"
    bf16 = mode == "eager_bf16" or mode in BF16_MODES
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        # Without AVX512-BF16/AMX oneDNN emulates bf16, many times slower than fp32 (minutes per DDIM-50 row on a
        # 2-core AVX2 machine): a figure about the CPU's instruction set, not about either generator.
        return f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (AVX512-BF16 or AMX)"
    if mode in COMPILED_MODES:
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs triton, which is not installed"
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "torch.compile on CPU needs a C++ compiler (g++/c++/clang++ not on PATH)"
    return None


def as_bf16(model: nn.Module, z: Tensor) -> tuple[nn.Module, Tensor]:
    """A bf16, channels-last copy of `model` (the original keeps its fp32 weights) and `z` to match."""
    fmt = torch.channels_last
    return copy.deepcopy(model).to(torch.bfloat16, memory_format=fmt), z.to(torch.bfloat16, memory_format=fmt)


def _prepare(mode: str, model: nn.Module, device: torch.device) -> tuple[nn.Module, Callable[[], Any]]:
    """The module to call under `mode` and a factory for the context each call runs in."""
    if mode == "eager_bf16":
        return model, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if mode in COMPILED_MODES:
        # A fresh dynamo cache per row, so each row's compile_s is its own compile, not a cache hit.
        torch._dynamo.reset()
        # dynamic=False: one static graph per batch size, as a deployed sampler would run. Under no_grad each
        # call of a reduce-overhead (CUDA graph) module starts a new cudagraph-tree generation, so a sampler that
        # consumes eps before the next step (DDIM does) needs no cudagraph_mark_step_begin.
        compiled = torch.compile(model, mode=COMPILED_MODES[mode], dynamic=False)
        return compiled, contextlib.nullcontext
    return model, contextlib.nullcontext


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call_ms(call: Callable[[], Any], device: torch.device) -> float:
    """Latency of one call: CUDA events on GPU (device time), perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def count_nfe(model: nn.Module, sampler: Sampler, z: Tensor) -> int:
    """Network evaluations per sample of one sampler call, counted by a forward hook (not declared): the rows the
    network processes over the batch size, so classifier-free guidance, which runs the conditional and the
    unconditional epsilon as one call on 2B rows, counts two per step."""
    rows = 0

    def hook(_: nn.Module, args: tuple) -> None:
        nonlocal rows
        rows += args[0].shape[0]

    handle = model.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            sampler(model, z)
    finally:
        handle.remove()
    return rows // z.shape[0]


def nfe_per_sample(model: nn.Module, sample: Callable[..., Tensor], *, num_classes: int, image_size: int,
                   seed: int, device: torch.device) -> int:
    """count_nfe of `sample(z[, labels])` (a generators sampler) on sample 0's fixed noise, with class 0's label
    for a conditional generator: what the sample and guidance stages report next to their images."""
    from .generators import class_labels, fixed_noise  # generators imports nothing from here; keep it that way

    label = class_labels([0], num_classes)
    z = fixed_noise([0], (3, image_size, image_size), seed).to(device)
    return count_nfe(model, lambda _, x: sample(x) if label is None else sample(x, label.to(device)), z)


def _row(model: str, mode: str, batch: int, status: str, reason: str = "", **metrics: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_KEYS)
    row.update(model=model, mode=mode, batch_size=batch, status=status, reason=reason, **metrics)
    return row


def _measure(model: nn.Module, sampler: Sampler, z: Tensor, mode: str, *, repeats: int, warmup: int,
             device: torch.device) -> dict[str, Any]:
    if mode in BF16_MODES:
        model, z = as_bf16(model, z)
    module, ctx = _prepare(mode, model, device)

    def call() -> None:
        with ctx():
            sampler(module, z)

    with torch.no_grad():
        # The first call compiles in compiled modes; it is timed apart and kept out of the measurement.
        t0 = time.perf_counter()
        call()
        _sync(device)
        first_s = time.perf_counter() - t0
        for _ in range(warmup - 1):
            call()
        _sync(device)
        lat_ms = [_time_call_ms(call, device) for _ in range(repeats)]
    median = statistics.median(lat_ms)
    return {"latency_ms_median": median, "latency_ms_min": min(lat_ms),
            "images_per_s": z.shape[0] / (median / 1e3),
            "compile_s": first_s if mode in COMPILED_MODES else None}


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".strip()


def benchmark_matrix(model: nn.Module, generators: Mapping[str, Sampler], *, make_noise: Callable[[int], Tensor],
                     modes: Sequence[str], batch_sizes: Sequence[int], repeats: int, warmup: int,
                     device: torch.device, progress: bool = True) -> list[dict[str, Any]]:
    """One row per (generator, mode, batch size); unavailable modes are 'skipped', errors 'failed' (never dropped).

    `generators` maps a name (e.g. 'ddpm', 'drift') to a sampler `(model, x_T) -> x_0`; `make_noise(B)` gives the
    fixed-seed x_T. compile_s is the wall time of the first (compiling) call, excluded from the latencies.
    """
    if repeats < 1 or warmup < 1:
        raise ValueError(f"repeats and warmup must be >= 1, got {repeats=}, {warmup=}")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; expected a subset of {MODES}")
    model = model.to(device).eval()
    noise = {b: make_noise(b).to(device) for b in batch_sizes}  # (B,3,H,W) each, made once, outside timing
    nfe = {}
    for name, sampler in generators.items():
        # A sampler broken in eager mode still gets its rows (as failures below), so NFE falls back to None.
        with contextlib.suppress(Exception):
            nfe[name] = count_nfe(model, sampler, noise[min(batch_sizes)])
    combos = [(m, g, b) for m in modes for g in generators for b in batch_sizes]
    rows = []
    for mode, name, batch in tqdm(combos, disable=not progress, desc="benchmark", unit="row"):
        reason = mode_unavailable_reason(mode, device)
        if reason is not None:
            rows.append(_row(name, mode, batch, "skipped", reason, nfe=nfe.get(name)))
            continue
        try:
            metrics = _measure(model, generators[name], noise[batch], mode, repeats=repeats, warmup=warmup,
                               device=device)
        except Exception as err:  # noqa: BLE001 - a failing mode is a result, recorded with its first line
            rows.append(_row(name, mode, batch, "failed", _first_line(err), nfe=nfe.get(name)))
            continue
        rows.append(_row(name, mode, batch, "ok", nfe=nfe.get(name), **metrics))
    return rows


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"device_type": device.type, "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
            "python": platform.python_version(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu_model"]
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _ok(rows: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    return (r for r in rows if r["status"] == "ok")


def summarize(rows: Sequence[Mapping[str, Any]], *, fast: str = "drift", slow: str = "ddpm") -> dict[str, Any]:
    """Headline metrics: per batch size, fast/slow images/s and their ratio (per mode and best mode),
    batch-1 latency, and each mode's speed-up over eager_fp32."""
    ips = {(r["model"], r["mode"], r["batch_size"]): r["images_per_s"] for r in _ok(rows)}
    batches = sorted({b for _, _, b in ips})
    modes = [m for m in MODES if any(k[1] == m for k in ips)]
    out: dict[str, Any] = {"by_batch": {}, "latency_ms_batch1": {},
                           "speedup_vs_eager_fp32": {fast: {}, slow: {}}, "counts": {}}
    for b in batches:
        fast_ips = {m: ips[fast, m, b] for m in modes if (fast, m, b) in ips}
        slow_ips = {m: ips[slow, m, b] for m in modes if (slow, m, b) in ips}
        entry: dict[str, Any] = {
            f"{fast}_images_per_s": fast_ips, f"{slow}_images_per_s": slow_ips,
            "ratio": {m: fast_ips[m] / slow_ips[m] for m in fast_ips if m in slow_ips}}
        if fast_ips and slow_ips:
            best_fast, best_slow = max(fast_ips, key=fast_ips.get), max(slow_ips, key=slow_ips.get)
            entry["best"] = {f"{fast}_mode": best_fast, f"{fast}_images_per_s": fast_ips[best_fast],
                             f"{slow}_mode": best_slow, f"{slow}_images_per_s": slow_ips[best_slow],
                             "ratio": fast_ips[best_fast] / slow_ips[best_slow]}
        out["by_batch"][f"bs{b}"] = entry
        for name in (fast, slow):
            base = ips.get((name, "eager_fp32", b))
            if base is not None:
                out["speedup_vs_eager_fp32"][name][f"bs{b}"] = {
                    m: ips[name, m, b] / base for m in modes if m != "eager_fp32" and (name, m, b) in ips}
    for name in (fast, slow):
        out["latency_ms_batch1"][name] = {r["mode"]: r["latency_ms_median"] for r in _ok(rows)
                                          if r["model"] == name and r["batch_size"] == 1}
    for status in ("ok", "skipped", "failed"):
        out["counts"][status] = sum(r["status"] == status for r in rows)
    return out
