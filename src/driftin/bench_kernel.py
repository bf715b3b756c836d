"""Kernel benchmark: the drift loss (forward + backward) old vs new, side by side, against the machine's matmul peak.

`python -m driftin.bench_kernel [--cases default mae32 resnet18 dinov2] [--repeats 3] [--no-step]` times one
drift-loss call on the feature groups of
- `default`: the default run (params.yaml: encoder mae, image size, drift batch and positives, temperatures),
  built through the real encoder with random weights and `feature_groups`;
- `mae32`, `resnet18`, `dinov2`: the README's paper-scale command (32x32, batch 128, 256 positives), with random
  weights; the maps have the encoder's exact shapes (measured on one image), filled with noise, because running
  a random ResNet-18 or ViT-B on 384 images per repeat would dominate a CPU run and tell nothing about the kernel.
Each case runs the per-group reference (`driftin.drift_reference`, "old") and the batched kernel
(`driftin.drift`, "new") interleaved, and reports ms per call (median), the speed-up, GFLOP/s (distances and
matmuls, the same count for both) and the fraction of the peak of a large fp32 `torch.mm` timed in the same run.
The default case also splits a whole drift step (generator forward, encoder + feature groups, kernel, backward,
optimizer) for the old path (NCHW encoder, per-group kernel) and the new one, next to a DDPM step at the same
batch. Results go to `metrics/kernel.json`. Timings on a shared machine are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from . import drift, drift_reference
from .config import load_params
from .ddpm import alphas_cumprod, ddpm_loss, linear_betas
from .encoders import (DINOV2_BLOCKS, DINOV2_MODEL, DINOv2Encoder, MAEFeatureEncoder, PixelEncoder,
                       ResNet18Encoder)
from .features import feature_groups
from .files import write_json
from .generators import DRIFT_T
from .mae import MAEConfig, MAEEncoder
from .unet import build_unet

# The README's paper-scale command: CIFAR-10 at 32x32, drift.batch_size=128, drift.positives=256.
PAPER_SIZE, PAPER_BATCH, PAPER_POSITIVES = 32, 128, 256
CASES = ("default", "mae32", "resnet18", "dinov2")
IMPLS = {"old": drift_reference.drift_loss, "new": drift.drift_loss}
MIN_SECONDS = 5.0  # per path and case, at least


def _encoder(name: str) -> nn.Module:
    """A random-weight encoder of the project's own classes (no downloads)."""
    torch.manual_seed(0)
    if name == "pixel":
        return PixelEncoder()
    if name == "mae":
        return MAEFeatureEncoder(MAEEncoder(MAEConfig()).state_dict()).freeze()
    if name == "resnet18":
        from torchvision.models import resnet18

        return ResNet18Encoder(resnet18().state_dict()).freeze()
    if name == "dinov2":
        import timm

        vit = timm.create_model(DINOV2_MODEL, pretrained=False, img_size=112, num_classes=0)
        return DINOv2Encoder(vit, 112, DINOV2_BLOCKS).freeze()
    raise ValueError(f"no benchmark encoder {name!r}")


def _features(case: str, params) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(generated, positive) feature groups of one step of `case`."""
    g = torch.Generator().manual_seed(0)
    if case == "default":
        size, n, n_pos = params.data.image_size, params.drift.batch_size, params.drift.positives
        encoder = _encoder(params.encoder)
        with torch.no_grad():
            gen = encoder(torch.randn(n, 3, size, size, generator=g).clamp(-1, 1))
            pos = encoder(torch.rand(n_pos, 3, size, size, generator=g) * 2 - 1)
        return feature_groups(gen), feature_groups(pos)
    encoder = _encoder("mae" if case == "mae32" else case)
    with torch.no_grad():
        shapes = [m.shape[1:] for m in encoder(torch.zeros(1, 3, PAPER_SIZE, PAPER_SIZE))]
    gen = [torch.randn(PAPER_BATCH, *s, generator=g) for s in shapes]
    pos = [torch.randn(PAPER_POSITIVES, *s, generator=g) + 0.1 for s in shapes]
    return feature_groups(gen), feature_groups(pos)


def kernel_flops(gen: dict[str, torch.Tensor], pos: dict[str, torch.Tensor], n_tau: int) -> float:
    """FLOPs of one drift-loss call's matmul-shaped work: distances x-to-targets and positive-to-positive (matmul
    form, 2 per multiply-add) and the field's A @ targets per temperature. Elementwise work is not counted."""
    total = 0.0
    for name, x in gen.items():
        L, N, C = x.shape
        n_pos = pos[name].shape[1]
        T = N + n_pos
        total += 2 * L * C * (N * T + n_pos * n_pos + n_tau * N * T)
    return total


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n fp32 torch.mm: the machine's practical peak for this thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _loss_call(impl: Callable, gen: dict, pos: dict, taus: tuple[float, ...]) -> Callable[[], None]:
    def call() -> None:
        x = {k: v.detach().requires_grad_() for k, v in gen.items()}
        loss, _ = impl(x, pos, taus)
        loss.backward()
    return call


def bench_case(case: str, params, repeats: int, peak: float) -> dict:
    gen, pos = _features(case, params)
    taus = tuple(params.drift.temperatures)
    calls = {name: _loss_call(impl, gen, pos, taus) for name, impl in IMPLS.items()}
    for call in calls.values():  # warm-up
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    # Interleaved, so both see the same machine load; a cheap case repeats until each path has run MIN_SECONDS,
    # since a shared machine's load swings by tens of percent within seconds.
    while len(times["new"]) < repeats or min(sum(t) for t in times.values()) < MIN_SECONDS:
        for name, call in calls.items():
            times[name].append(_seconds(call))
    flops = kernel_flops(gen, pos, len(taus))
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    out = {"groups": len(gen), "problems": sum(x.shape[0] for x in gen.values()), "repeats": len(times["new"]),
           "generated": next(iter(gen.values())).shape[1], "positives": next(iter(pos.values())).shape[1],
           "gflop_per_call": round(flops / 1e9, 3), "speedup": round(ms["old"] / ms["new"], 2)}
    for name, m in ms.items():
        gflops = flops / (m / 1e3) / 1e9
        out |= {f"{name}_ms": round(m, 1), f"{name}_gflops": round(gflops, 2),
                f"{name}_peak_fraction": round(gflops / peak, 3)}
    return out


def bench_step(params, repeats: int) -> dict:
    """One drift step split into its parts, old path vs new, and a DDPM step on the same UNet and batch."""
    size, n, n_pos = params.data.image_size, params.drift.batch_size, params.drift.positives
    taus = tuple(params.drift.temperatures)
    encoders = {"old": _encoder(params.encoder),
                "new": _encoder(params.encoder).to(memory_format=torch.channels_last)}
    with torch.no_grad():
        real = [m.half() for m in encoders["old"](torch.rand(4 * n_pos, 3, size, size) * 2 - 1)]
    real_maps = {"old": real, "new": [m.contiguous(memory_format=torch.channels_last) for m in real]}
    torch.manual_seed(0)
    unet = build_unet(params.unet.preset, size)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def drift_step(path: str) -> dict[str, float]:
        channels_last = torch.channels_last if path == "new" else torch.contiguous_format
        parts, t0 = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t0
            now = time.perf_counter()
            parts[name] = (now - t0) * 1e3
            t0 = now

        x = unet(torch.randn(n, 3, size, size, generator=gen), torch.full((n,), DRIFT_T, dtype=torch.long))
        lap("generator_ms")
        g = feature_groups(encoders[path](x.float().contiguous(memory_format=channels_last)))
        idx = torch.randint(len(real), (n_pos,), generator=gen)
        p = feature_groups([m[idx].float() for m in real_maps[path]])
        lap("encoder_ms")
        loss, _ = IMPLS[path](g, p, taus)
        lap("kernel_ms")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward_ms")
        torch.nn.utils.clip_grad_norm_(unet.parameters(), params.drift.grad_clip)
        opt.step()
        lap("optimizer_ms")
        return parts

    alpha_bar = alphas_cumprod(linear_betas()).float()

    def ddpm_step() -> dict[str, float]:
        t0 = time.perf_counter()
        x0 = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
        t = torch.randint(alpha_bar.shape[0], (n,), generator=gen)
        loss = ddpm_loss(unet, x0, t, torch.randn(x0.shape, generator=gen), alpha_bar).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), params.ddpm.grad_clip)
        opt.step()
        return {"total_ms": (time.perf_counter() - t0) * 1e3}

    steps = {"old": lambda: drift_step("old"), "new": lambda: drift_step("new"), "ddpm": ddpm_step}
    for step in steps.values():  # warm-up
        step()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            rows[name].append(step())
    out = {}
    for name, rs in rows.items():
        for r in rs:
            r.setdefault("total_ms", sum(r.values()))
        med = {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
        out[name] = med | {"images_per_s": round(n / med["total_ms"] * 1e3, 1)}
    return {"batch_size": n, "positives": n_pos, "unet": params.unet.preset, "drift_old": out["old"],
            "drift_new": out["new"], "ddpm": out["ddpm"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-step", action="store_true", help="skip the whole-step breakdown")
    p.add_argument("--out", default="metrics/kernel.json")
    args = p.parse_args()
    params = load_params(args.params)
    peak = matmul_peak_gflops()
    print(f"threads {torch.get_num_threads()}, fp32 matmul peak {peak:.1f} GFLOP/s")
    result: dict = {"threads": torch.get_num_threads(), "matmul_peak_gflops": round(peak, 1), "kernel": {}}
    for case in args.cases:
        r = bench_case(case, params, args.repeats, peak)
        result["kernel"][case] = r
        print(f"{case}: {r['groups']} groups, {r['problems']} problems, {r['gflop_per_call']} GFLOP; old "
              f"{r['old_ms']:.0f} ms, new {r['new_ms']:.0f} ms ({r['speedup']}x), new {r['new_gflops']} GFLOP/s "
              f"= {r['new_peak_fraction']:.1%} of peak")
    if not args.no_step:
        result["step"] = s = bench_step(params, args.repeats)
        for name in ("drift_old", "drift_new", "ddpm"):
            print(f"step {name}: " + ", ".join(f"{k} {v}" for k, v in s[name].items()))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
