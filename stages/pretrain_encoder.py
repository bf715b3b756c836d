"""Stage `pretrain_encoder`: pretrain the drift loss's `mae` encoder once on `shapes`, and ship it in assets/.

The paper's own kind of feature encoder (a GroupNorm ResNet trained as a masked autoencoder, `driftin.mae`), trained
at a budget the 10-minute pipeline could not afford, like a downloaded DINOv2: a fresh clone's `dvc repro` reuses the
committed weights and `dvc repro -f pretrain_encoder` rebuilds them. As for the evaluator, its DVC deps are committed
code and params only (no `data/prepared`): the stage renders its own images from RNG streams no `prepare` seed uses,
so a CPU whose float rounding renders a pixel of the dataset differently still reuses it, and `-S seed=...` varies
the generators, never the encoder. It reads params.yaml directly (not driftin.config) so that its deps are the mae,
shapes and files modules alone. It trains on CPU unless `device` is cuda or auto with a GPU present (at the paper's
32 px a CPU would take the better part of an hour).
`cifar10` and `folder` data get an MAE pretrained in the run instead (`cache_features`, same `encoders.mae` keys).
"""
import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from driftin.files import torch_save, write_csv, write_json
from driftin.mae import MAEConfig, pretrain_mae, validate
from driftin.rules import ConfigError
from driftin.shapes import render_shapes

# Far above the streams `prepare` (2s, 2s + 1) and the evaluator (1_000_000 + 2s, + 1) use for seed s.
STREAM_OFFSET = 2_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True, help="encoder weights file")
    p.add_argument("--metrics", required=True)
    p.add_argument("--plot", required=True, help="CSV of the training loss per step")
    args = p.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    m = SimpleNamespace(**raw["encoders"]["mae"])
    size = raw["data"]["image_size"]
    validate(m, size)
    device = "cuda" if raw["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if "OMP_NUM_THREADS" not in os.environ:  # every core, as runtime.configure_threads (not imported: see above)
        torch.set_num_threads(os.cpu_count() or 1)

    stream = STREAM_OFFSET + 2 * m.seed
    images, _ = render_shapes(m.train_images, image_size=size, seed=stream)
    heldout, _ = render_shapes(m.heldout_images, image_size=size, seed=stream + 1)
    start = time.perf_counter()
    result = pretrain_mae(images, steps=m.steps, batch_size=m.batch_size, lr=m.lr, mask_ratio=m.mask_ratio,
                          patch_size=m.patch_size, seed=m.seed, device=device, heldout=heldout)
    seconds = time.perf_counter() - start

    torch_save(args.out, result.state)
    write_csv(args.plot, [{"step": i + 1, "loss": loss} for i, loss in enumerate(result.losses)])
    arch = MAEConfig.from_state_dict(result.state)
    write_json(args.metrics, {
        "train_images": m.train_images, "heldout_images": m.heldout_images, "steps": m.steps,
        "batch_size": m.batch_size, "image_size": size, "mask_ratio": m.mask_ratio, "patch_size": m.patch_size,
        "widths": list(arch.widths), "blocks": arch.blocks,
        "parameters": int(sum(v.numel() for v in result.state.values())),
        "final_loss": round(sum(result.losses[-50:]) / len(result.losses[-50:]), 5),
        "heldout_masked_mse": round(result.heldout_loss, 5),
        "train_seconds": round(seconds, 1), "device": device, "torch_threads": torch.get_num_threads(),
    })
    print(f"pretrain_encoder: mae, {m.steps} steps in {seconds:.0f} s, held-out masked MSE "
          f"{result.heldout_loss:.4f} -> {args.out}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # the one-paragraph form of cli.run (not imported: its closure is the whole package)
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(1)
