"""Assets: sample grids, the DDPM-vs-drift speed GIF, a batch GIF and PNG charts (headless, Agg backend).

Images are uint8 numpy [N, H, W, 3]. Every file is written to a temporary sibling and moved into place with
os.replace, so a DVC stage never leaves a half-written output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import functools
from types import ModuleType

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from driftin.files import atomic_path
from driftin.rules import positive, require

GIF_TICK_MS = 10  # GIF delays are stored in centiseconds
GIF_MIN_FRAME_MS = 20  # browsers replace shorter delays by 100 ms, which would distort the pacing
BG, FG, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


def validate(render, num_samples: int) -> None:
    """The `render` section (a config.RenderConfig) against evaluate.num_samples."""
    positive(render.grid_samples, "render.grid_samples")
    positive(render.columns_per_class, "render.columns_per_class")
    require(render.grid_samples <= num_samples, "render.grid_samples",
            f"must not exceed evaluate.num_samples ({num_samples}): grids reuse the FID samples")


@functools.cache
def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display on training/CI machines), imported on first use: every
    stage imports this module for `validate`, and matplotlib's ~1.5 s import belongs to the charts alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling keeps 32x32 samples crisp. img (H,W,3) -> (H*s,W*s,3)."""
    return img.repeat(scale, axis=0).repeat(scale, axis=1)


def image_grid(images: np.ndarray, nrow: int, *, scale: int = 2, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images [N,H,W,3] into rows of `nrow` images -> uint8 [rows*(H*s+pad)+pad, nrow*(W*s+pad)+pad, 3]."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N,H,W,3], got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    rows = math.ceil(n / nrow)
    hs, ws = h * scale, w * scale
    grid = np.full((rows * (hs + pad) + pad, nrow * (ws + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        y, x = pad + r * (hs + pad), pad + c * (ws + pad)
        grid[y:y + hs, x:x + ws] = _upscale(img, scale)
    return grid


def comparison_grid(rows: Mapping[str, np.ndarray], *, labels: Mapping[str, str] | None = None, scale: int = 2,
                    pad: int = 2, font_size: int = 14) -> Image.Image:
    """One labelled strip per model (e.g. DDPM above drift), same seeds column by column."""
    labels = labels or {}
    strips = {name: image_grid(imgs, len(imgs), scale=scale, pad=pad) for name, imgs in rows.items()}
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = {name: labels.get(name, name) for name in rows}
    label_w = max(int(probe.textlength(t, font=font)) for t in texts.values()) + 12
    width = label_w + max(s.shape[1] for s in strips.values())
    canvas = Image.new("RGB", (width, sum(s.shape[0] for s in strips.values())), BG)
    draw, y = ImageDraw.Draw(canvas), 0
    for name, strip in strips.items():
        canvas.paste(Image.fromarray(strip), (label_w, y))
        draw.text((6, y + strip.shape[0] // 2), texts[name], fill=FG, font=font, anchor="lm")
        y += strip.shape[0]
    return canvas


def class_grid(blocks: Mapping[str, np.ndarray], class_names: Sequence[str], *, scale: int = 2, pad: int = 2,
               font_size: int = 14) -> Image.Image:
    """Models side by side, one row per class: blocks {title: uint8 [K, M, H, W, 3]} (row k holds M samples of
    class k, the same noise in every block), the class names down the left and each block's title on top."""
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(str(c), font=font)) for c in class_names) + 12
    title_h = font_size + 10
    tiles = {t: image_grid(b.reshape(-1, *b.shape[2:]), b.shape[1], scale=scale, pad=pad) for t, b in blocks.items()}
    gap = 4 * pad
    # Each block is as wide as its samples or its title, whichever is wider (narrow grids keep readable titles).
    slot = {t: max(g.shape[1], int(probe.textlength(t, font=font)) + 12) for t, g in tiles.items()}
    width = label_w + sum(slot.values()) + gap * (len(tiles) - 1)
    height = title_h + max(g.shape[0] for g in tiles.values())
    canvas = Image.new("RGB", (width, height), BG)
    draw, x = ImageDraw.Draw(canvas), label_w
    for title, tile in tiles.items():
        canvas.paste(Image.fromarray(tile), (x + (slot[title] - tile.shape[1]) // 2, title_h))
        draw.text((x + slot[title] // 2, title_h // 2), title, fill=FG, font=font, anchor="mm")
        x += slot[title] + gap
    row_h = (next(iter(tiles.values())).shape[0] - pad) / len(class_names)
    for k, name in enumerate(class_names):
        draw.text((6, title_h + pad + row_h * (k + 0.5)), str(name), fill=FG, font=font, anchor="lm")
    return canvas


def per_class(images: np.ndarray, labels: np.ndarray, num_classes: int, columns: int) -> np.ndarray:
    """The first `columns` samples of each class -> [K, columns, H, W, 3] (raises if a class has fewer)."""
    rows = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)[:columns]
        if len(idx) < columns:
            raise ValueError(f"class {k} has {len(idx)} samples; the grid needs {columns}")
        rows.append(images[idx])
    return np.stack(rows)


def _playback_scale(ddpm_s: float, min_play_s: float, max_play_s: float) -> float:
    """Playback seconds per measured second, the same for both models; 1.0 whenever real time fits."""
    if ddpm_s > max_play_s:
        return max_play_s / ddpm_s
    if ddpm_s < min_play_s:
        return min_play_s / ddpm_s
    return 1.0


def _describe_scale(scale: float) -> str:
    if scale == 1.0:
        return "playback: real time"
    return f"playback: {1 / scale:.3g}x faster than real time" if scale < 1 else f"playback: {scale:.3g}x slow motion"


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _gif_schedule(drift_s: float, steps_s: list[float]) -> tuple[int, list[int], list[int]]:
    """Playback ms (on the GIF's 10 ms grid) at which drift finishes, each DDPM step lands, and frames start."""
    def tick(play_s: float) -> int:
        return max(GIF_MIN_FRAME_MS, round(play_s * 1e3 / GIF_TICK_MS) * GIF_TICK_MS)

    drift_at, step_at = tick(drift_s), [tick(s) for s in steps_s]
    starts = sorted({0, drift_at, *step_at})
    # Drop change points closer than the browsers' minimum delay; the later state shows at the next kept point.
    kept = [0]
    for t in starts[1:]:
        if t - kept[-1] >= GIF_MIN_FRAME_MS:
            kept.append(t)
    kept[-1] = starts[-1]  # the last state lands exactly at its measured (scaled) latency
    return drift_at, step_at, kept


def speed_gif(ddpm_frames: Sequence[np.ndarray], drift_image: np.ndarray, *, ddpm_latency_s: float,
              drift_latency_s: float, path: str | os.PathLike, noise_image: np.ndarray | None = None,
              titles: tuple[str, str] = ("DDPM (DDIM, 50 steps)", "Drifting (1 step)"), device_label: str = "",
              size: int = 160, min_play_s: float = 2.0, max_play_s: float = 8.0, hold_s: float = 2.5) -> dict[str, Any]:
    """Both generators side by side, paced by their MEASURED latencies.

    ddpm_frames: the K intermediate images (x_t or predicted x_0), frame k shown once k/K of the DDPM latency has
    elapsed (each DDIM step costs one NFE). Drift's image appears at its latency. Time is scaled uniformly for both
    when DDPM's latency does not fit in [min_play_s, max_play_s]; the caption states the factor.
    Returns {"scale", "durations_ms", "drift_frame", "ddpm_frames"} describing the written GIF.
    """
    if ddpm_latency_s <= 0 or drift_latency_s <= 0:
        raise ValueError("latencies must be measured, positive values")
    scale = _playback_scale(ddpm_latency_s, min_play_s, max_play_s)
    k = len(ddpm_frames)
    drift_at, step_at, kept = _gif_schedule(drift_latency_s * scale, [ddpm_latency_s * scale * (i + 1) / k
                                                                      for i in range(k)])
    durations = [b - a for a, b in zip(kept, kept[1:])] + [round(hold_s * 1e3 / GIF_TICK_MS) * GIF_TICK_MS]

    placeholder = noise_image if noise_image is not None else np.full_like(drift_image, 128)
    title_font, font, small = _font(15), _font(13), _font(11)
    pad, head, foot = 12, 26, 54
    width, height = 3 * pad + 2 * size, head + size + foot + 26
    caption = (f"measured{' on ' + device_label if device_label else ''}: DDPM {_fmt_s(ddpm_latency_s)}, "
               f"drift {_fmt_s(drift_latency_s)} ({ddpm_latency_s / drift_latency_s:.3g}x)")

    def panel(img: np.ndarray) -> Image.Image:
        return Image.fromarray(img).resize((size, size), Image.NEAREST)

    frames = []
    for t in kept:
        steps_done = sum(s <= t for s in step_at)
        ddpm_img = ddpm_frames[steps_done - 1] if steps_done else placeholder
        drift_done = t >= drift_at
        canvas = Image.new("RGB", (width, height), BG)
        draw = ImageDraw.Draw(canvas)
        for col, (title, img, status) in enumerate((
                (titles[0], ddpm_img, f"step {steps_done}/{k}" + (f" - done in {_fmt_s(ddpm_latency_s)}"
                                                                   if steps_done == k else "")),
                (titles[1], drift_image if drift_done else placeholder,
                 f"done in {_fmt_s(drift_latency_s)}" if drift_done else "generating..."))):
            x = pad + col * (size + pad)
            draw.text((x + size // 2, head // 2), title, fill=FG, font=title_font, anchor="mm")
            canvas.paste(panel(img), (x, head))
            draw.text((x + size // 2, head + size + 12), status, fill=FG, font=font, anchor="mm")
        draw.text((width // 2, head + size + 34), f"t = {t / scale / 1e3:.3f} s (measured time)", fill=MUTED,
                  font=font, anchor="mm")
        draw.text((width // 2, height - 24), caption, fill=MUTED, font=small, anchor="mm")
        draw.text((width // 2, height - 10), _describe_scale(scale), fill=MUTED, font=small, anchor="mm")
        frames.append(canvas)

    def write(tmp: Path) -> None:
        frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)

    _atomic(path, write)
    drift_frame = kept.index(next(t for t in kept if t >= drift_at))
    return {"scale": scale, "durations_ms": durations, "drift_frame": drift_frame, "ddpm_frames": k}


def batch_gif(batches: Sequence[np.ndarray], path: str | os.PathLike, *, nrow: int, frame_ms: int = 700,
              scale: int = 2, captions: Sequence[str] | None = None) -> Path:
    """Cycle through grids of samples (one frame per batch/seed); one shared palette keeps the file small."""
    font = _font(12)
    frames = []
    for i, batch in enumerate(batches):
        grid = Image.fromarray(image_grid(batch, nrow, scale=scale))
        if captions is not None:
            framed = Image.new("RGB", (grid.width, grid.height + 18), BG)
            framed.paste(grid, (0, 0))
            ImageDraw.Draw(framed).text((grid.width // 2, grid.height + 9), captions[i], fill=FG, font=font,
                                        anchor="mm")
            grid = framed
        frames.append(grid)
    # Quantise every frame to the first frame's adaptive palette: consistent colours, no per-frame palettes.
    palette = frames[0].quantize(colors=256)
    paletted = [f.quantize(palette=palette) for f in frames]

    def write(tmp: Path) -> None:
        paletted[0].save(tmp, save_all=True, append_images=paletted[1:], duration=frame_ms, loop=0, optimize=True)

    return _atomic(path, write)


def _save_fig(fig: Any, path: str | os.PathLike) -> Path:
    try:
        return _atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    finally:
        _pyplot().close(fig)


def plot_training_curves(curves: Mapping[str, pd.DataFrame | str | os.PathLike], path: str | os.PathLike, *,
                         x: str = "step", columns: Sequence[str] | None = None, logy: bool = True) -> Path:
    """One subplot per metric column, one line per run. curves: run label -> table (or CSV) with an `x` column."""
    frames = {label: p if isinstance(p, pd.DataFrame) else pd.read_csv(p) for label, p in curves.items()}
    if columns is None:
        columns = sorted({c for df in frames.values() for c in df.select_dtypes("number").columns if c != x})
    fig, axes = _pyplot().subplots(1, len(columns), figsize=(4.2 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes[0], columns):
        for i, (label, df) in enumerate(frames.items()):
            if col in df:  # colour by run index, so a run has one colour in every subplot
                ax.plot(df[x], df[col], label=label, linewidth=1.2, color=f"C{i}")
        ax.set(title=col, xlabel=x)
        if logy and all((df[col] > 0).all() for df in frames.values() if col in df):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, path)


def plot_quality_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, *,
                        floor: float | None = None) -> Path:
    """The quality curves of several runs (label -> eval rows: step, train_seconds, fid, fid_lo, fid_hi, and
    recognisability or else confidence): FID against steps and against training seconds, with the bootstrap 95%
    band, and the recognisability (or confidence) against steps. `floor`: held-out real images' FID at the same
    sample count, drawn as the curve's zero."""
    third = ("recognisability" if all(r.get("recognisability") is not None for rows in curves.values() for r in rows)
             else "confidence")
    third_title = {"recognisability": "recognisability (share of the requested class)",
                   "confidence": "evaluator confidence (mean top-class prob.)"}[third]
    fig, axes = _pyplot().subplots(1, 3, figsize=(13.5, 3.6))
    for i, (label, rows) in enumerate(curves.items()):
        df = pd.DataFrame(list(rows))
        if df.empty:
            continue
        for ax, x in zip(axes[:2], ("step", "train_seconds")):
            ax.plot(df[x], df["fid"], marker="o", color=f"C{i}", label=label, linewidth=1.4)
            if {"fid_lo", "fid_hi"} <= set(df):
                ax.fill_between(df[x], df["fid_lo"], df["fid_hi"], color=f"C{i}", alpha=0.2, linewidth=0)
        if third in df:
            axes[2].plot(df["step"], df[third], marker="o", color=f"C{i}", label=label, linewidth=1.4)
    for ax, x, title in ((axes[0], "training step", "FID during training"),
                         (axes[1], "training seconds (evaluation excluded)", "FID against wall-clock"),
                         (axes[2], "training step", third_title)):
        if floor is not None and ax is not axes[2]:
            ax.axhline(floor, color="0.4", linestyle=":", label="held-out real (floor)")
        ax.set(xlabel=x, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("FID (lower is better)")
    fig.tight_layout()
    return _save_fig(fig, path)


def plot_fid(metrics: Mapping[str, float | Mapping[str, float]], path: str | os.PathLike, *,
             key: str = "fid") -> Path:
    """Bar chart of FID per model (lower is better); metrics: model -> FID or {fid, fid_lo?, fid_hi?, nfe?, ...}.
    With `<key>_lo` / `<key>_hi` (the bootstrap 95% interval) the bars carry it as error bars."""
    names = list(metrics)
    values = [float(m[key] if isinstance(m, Mapping) else m) for m in metrics.values()]
    ticks = [f"{n}\n({int(m['nfe'])} NFE)" if isinstance(m, Mapping) and "nfe" in m else n
             for n, m in metrics.items()]
    bounds = [(m.get(f"{key}_lo", v), m.get(f"{key}_hi", v)) if isinstance(m, Mapping) else (v, v)
              for m, v in zip(metrics.values(), values)]
    yerr = np.clip([[v - lo for (lo, _), v in zip(bounds, values)], [hi - v for (_, hi), v in zip(bounds, values)]],
                   0, None)  # (2, models): below, above
    fig, ax = _pyplot().subplots(figsize=(1.8 + 1.4 * len(names), 3.4))
    bars = ax.bar(ticks, values, yerr=yerr, capsize=4, color=[f"C{i}" for i in range(len(names))])
    ax.bar_label(bars, fmt="%.2f")
    ax.set(ylabel=f"{key.upper()} (lower is better)", title=key.upper())
    ax.margins(y=0.15)
    return _save_fig(fig, path)


def plot_benchmark(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Images/s vs batch size (log-log), one line per model x mode; skipped/failed modes listed, not drawn."""
    ok = pd.DataFrame([r for r in rows if r["status"] == "ok"])
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    styles = ["-", "--", ":", "-."]
    models = list(dict.fromkeys(r["model"] for r in rows))
    if not ok.empty:
        for (model, mode), g in ok.groupby(["model", "mode"], sort=False):
            g = g.sort_values("batch_size")
            ax.plot(g["batch_size"], g["images_per_s"], marker="o", color=f"C{modes.index(mode)}",
                    linestyle=styles[models.index(model) % len(styles)], label=f"{model} / {mode}")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s", title=title)
    batches = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(_pyplot().NullLocator())  # only the measured batch sizes as x ticks
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    absent = sorted({f"{r['mode']} ({r['status']}: {r['reason']})" for r in rows if r["status"] != "ok"})
    if absent:
        fig.text(0.01, -0.02, "not shown: " + "; ".join(absent), fontsize=7, color="0.4", va="top", wrap=True)
    return _save_fig(fig, path)
