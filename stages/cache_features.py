"""Stage `cache_features`: build (for `mae`: pretrain on the dataset) the chosen encoder and cache the feature
maps of real images and their horizontal flips, so drift training runs the encoder on generated images only."""
import time

import numpy as np
import torch

from driftin import cli
from driftin.config import load_params
from driftin.encoders import build_encoder
from driftin.features import feature_groups
from driftin.files import load_npz, torch_save, write_csv, write_json
from driftin.generators import to_float
from driftin.mae import pretrain_mae
from driftin.runtime import configure_threads, resolve_device, seed_everything


@torch.no_grad()
def encode(encoder, images: torch.Tensor, batch_size: int, device) -> list[torch.Tensor]:
    """uint8 NHWC images -> one fp16 CPU tensor [N, C, H, W] per encoder depth."""
    chunks = []
    for start in range(0, len(images), batch_size):
        maps = encoder(to_float(images[start:start + batch_size]).to(device))
        chunks.append([m.half().cpu() for m in maps])
    return [torch.cat(depth) for depth in zip(*chunks)]


@torch.no_grad()
def time_positive_features(fn, repeats: int = 5) -> float:
    """Median seconds of one step's worth of positive features."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--data", default="data/prepared/train.npz")
    p.add_argument("--out", default="data/features")
    p.add_argument("--metrics", default="metrics/features.json")
    p.add_argument("--plot", default="plots/encoder_pretrain.csv")
    args = p.parse_args()
    params = load_params(args.params)
    enc_cfg = params.encoders
    configure_threads()
    device = resolve_device(params.device)
    seed_everything(params.seed)

    images = torch.from_numpy(load_npz(args.data)["images"])
    mae_state, curve = None, []
    if params.encoder == "mae":
        m = enc_cfg.mae
        mae_state, losses = pretrain_mae(images.numpy(), steps=m.steps, batch_size=m.batch_size, lr=m.lr,
                                         mask_ratio=m.mask_ratio, patch_size=m.patch_size, seed=params.seed,
                                         device=str(device))
        curve = [{"step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    encoder = build_encoder(params.encoder, image_size=params.data.image_size, **encoder_kwargs(params, mae_state))
    encoder.to(device)

    # A fixed subset of the training set (and its mirror images) stands in for the data distribution.
    gen = torch.Generator().manual_seed(params.seed)
    subset = torch.randperm(len(images), generator=gen)[: enc_cfg.cache_images]
    real = images[subset]
    real = torch.cat([real, real.flip(2)])  # NHWC: flip W
    t0 = time.perf_counter()
    maps = encode(encoder, real, 256, device)
    cache_seconds = time.perf_counter() - t0

    n_pos = params.drift.positives
    idx = torch.randint(len(real), (n_pos,), generator=gen)
    cached_s = time_positive_features(lambda: feature_groups([m[idx].to(device).float() for m in maps]))
    encode_s = time_positive_features(lambda: feature_groups(encoder(to_float(real[idx]).to(device))))

    torch_save(f"{args.out}/encoder.pt", {"name": params.encoder, "mae_state": mae_state})
    torch_save(f"{args.out}/real.pt", {"maps": maps, "subset": subset})
    write_csv(args.plot, curve or [{"step": 0, "loss": float("nan")}])
    groups = feature_groups([m[:2].float() for m in maps])
    write_json(args.metrics, {
        "encoder": params.encoder,
        "cached_images": int(len(real)),
        "cache_seconds": round(cache_seconds, 2),
        "cache_mb": round(sum(m.numel() * m.element_size() for m in maps) / 2**20, 1),
        "feature_groups": len(groups),
        "kernel_problems": int(sum(g.shape[0] for g in groups.values())),
        "positives_ms_cached": round(cached_s * 1e3, 2),
        "positives_ms_reencoded": round(encode_s * 1e3, 2),
        "positives_speedup": round(encode_s / cached_s, 2),
        **({"mae_final_loss": round(curve[-1]["loss"], 5)} if curve else {}),
    })
    print(f"cache_features: {params.encoder}: {len(real)} images cached in {cache_seconds:.1f} s; "
          f"positives per step {cached_s * 1e3:.1f} ms cached vs {encode_s * 1e3:.1f} ms re-encoded")


def encoder_kwargs(params, mae_state) -> dict:
    """The build_encoder arguments for the configured encoder."""
    e = params.encoders
    if params.encoder == "mae":
        return {"mae_state": mae_state}
    if params.encoder == "resnet18":
        return {"weights": e.resnet18.weights}
    if params.encoder == "dinov2":
        return {"weights": e.dinov2.weights, "resize": e.dinov2.resize}
    return {}


if __name__ == "__main__":
    cli.run(main)
