"""Sampling outside DVC: images from a trained model file, for a class by name, as an array or a PNG grid.

    python -m driftin.sample data/models/drift.pt --class heart --n 64 --out heart.png

or from Python:

    from driftin.sample import sample
    images = sample("data/models/drift.pt", "heart", n=64)  # uint8 [64, H, W, 3]

Guidance defaults to the value the pipeline sampled with (params.yaml's evaluate.guidance at training time):
the CFG scale for DDPM (two network evaluations per DDIM step unless it is 1), alpha for drifting (one step).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import atomic_path
from .generators import fixed_noise, guidance_for, load_generator, num_classes, sampler, to_uint8


def class_index(record: dict, name: str | int | None) -> int | None:
    """A class given by name or index -> its index, checked against the model's classes (None: unconditional)."""
    names = [str(c) for c in record["meta"].get("class_names") or []]
    if name is None:
        return None
    if not names:
        raise ValueError(f"this {record['kind']} model is unconditional: it takes no class (drop --class)")
    if isinstance(name, int) or str(name).isdigit():
        i = int(name)
        if not 0 <= i < len(names):
            raise ValueError(f"class index {i} is out of range: the model has {len(names)} classes")
        return i
    if name not in names:
        raise ValueError(f"unknown class {name!r}; this model knows: {', '.join(names)}")
    return names.index(name)


def default_guidance(record: dict) -> float:
    """The guidance the pipeline sampled this model with (evaluate.guidance.<kind> of its training params)."""
    g = record["meta"].get("params", {}).get("evaluate", {}).get("guidance", {})
    return float(g.get(record["kind"], 1.0))


@torch.no_grad()
def sample(model_path: str | Path, class_name: str | int | None = None, *, n: int = 64, guidance: float | None = None,
           seed: int = 0, ddim_steps: int = 50, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """n samples (uint8 [n, H, W, 3]) of class `class_name` (a name or index; None: all classes in turn for a
    conditional model, i mod K, as the pipeline samples). `guidance`: the CFG scale (ddpm) or alpha (drift);
    None: the pipeline's. Sample i depends only on (seed, i), so the same call gives the same images."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dev = torch.device(device)
    model, record = load_generator(model_path, dev)
    kind, size, k = record["kind"], record["image_size"], num_classes(record)
    c = class_index(record, class_name)
    if guidance is not None and not k:
        raise ValueError(f"this {kind} model is unconditional: it takes no guidance")
    draw = sampler(kind, model, ddim_steps, **guidance_for(kind, k, default_guidance(record) if guidance is None
                                                             else guidance))
    out = []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        z = fixed_noise(idx, (3, size, size), seed).to(dev)
        labels = None
        if k:
            labels = torch.tensor([c if c is not None else i % k for i in idx], dtype=torch.long, device=dev)
        out.append(to_uint8(draw(z, labels)))
    return np.concatenate(out)


def save_grid(images: np.ndarray, path: str | Path, scale: int | None = None) -> None:
    """A square-ish PNG grid of uint8 [N, H, W, 3] images, magnified to be seen."""
    from .render import image_grid  # matplotlib-free, but PIL fonts load only when rendering

    scale = scale or max(1, 64 // images.shape[1])
    grid = image_grid(images, math.ceil(math.sqrt(len(images))), scale=scale)
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model file written by train_ddpm or train_drift (data/models/*.pt)")
    p.add_argument("--class", dest="class_name", default=None, help="class name or index (conditional models)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", required=True, help="PNG grid to write (.npy: the raw uint8 array)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (ddpm) or alpha (drift)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        images = sample(args.model, args.class_name, n=args.n, guidance=args.guidance, seed=args.seed,
                        ddim_steps=args.ddim_steps, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if args.out.endswith(".npy"):
        with atomic_path(Path(args.out)) as tmp, tmp.open("wb") as f:
            np.save(f, images)
    else:
        save_grid(images, args.out)
    print(f"{len(images)} samples -> {args.out}")


if __name__ == "__main__":
    main()
