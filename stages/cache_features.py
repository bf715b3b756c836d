"""Stage `cache_features`: build the chosen encoder and cache the feature maps of real images and their horizontal
flips, so drift training runs the encoder on generated images only. `mae` is the shipped encoder of the
`pretrain_encoder` stage for `shapes`, and is pretrained here on the training split for `cifar10` and `folder`."""
import time

import torch

from driftin import cli
from driftin.config import load_params
from driftin.encoders import build_encoder
from driftin.feature_cache import balanced_subset, encode, encoder_kwargs, positives_timing, with_flips
from driftin.features import feature_groups
from driftin.files import load_npz, torch_save, write_json
from driftin.mae import pretrain_mae
from driftin.runtime import configure_threads, resolve_device, seed_everything


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--mae", required=True, help="the shipped mae encoder (pretrain_encoder), used for shapes data")
    args = p.parse_args()
    params = load_params(args.params)
    configure_threads()
    device = resolve_device(params.device)
    seed_everything(params.seed)
    data = load_npz(args.data)
    images = torch.from_numpy(data["images"])

    mae_state, mae_record = None, {}
    if params.encoder == "mae" and params.data.dataset == "shapes":
        mae_state = torch.load(args.mae, map_location="cpu", weights_only=True)
        mae_record = {"mae": "shipped"}
    elif params.encoder == "mae":
        m = params.encoders.mae
        result = pretrain_mae(images.numpy(), steps=m.steps, batch_size=m.batch_size, lr=m.lr,
                              mask_ratio=m.mask_ratio, patch_size=m.patch_size, seed=m.seed, device=str(device))
        mae_state = result.state
        mae_record = {"mae": "pretrained in the run", "mae_final_loss": round(result.losses[-1], 5)}
    encoder = build_encoder(params.encoder, image_size=params.data.image_size,
                            **encoder_kwargs(params, mae_state)).to(device)

    # A fixed random subset of the training set, with mirror images, stands in for the data distribution; balanced
    # over classes, so conditional training finds positives of every class.
    gen = torch.Generator().manual_seed(params.seed)
    subset = balanced_subset(torch.from_numpy(data["labels"]), params.encoders.cache_images, gen)
    real = with_flips(images[subset])
    t0 = time.perf_counter()
    maps = encode(encoder, real, 256, device)
    cache_seconds = time.perf_counter() - t0
    official = params.encoders.feature_set == "official"
    timing = positives_timing(encoder, real, maps, params.drift.positives, device, gen, with_input=official)

    torch_save(f"{args.out}/encoder.pt", {"name": params.encoder, "mae_state": mae_state,
                                          "feature_set": params.encoders.feature_set})
    # Labels of the cached images (and flips), so conditional drift training draws each class's positives.
    labels = torch.from_numpy(data["labels"])[subset]
    torch_save(f"{args.out}/real.pt", {"maps": maps, "subset": subset, "labels": torch.cat([labels, labels]),
                                       "class_names": [str(c) for c in data["class_names"]]})
    groups = feature_groups([m[:2].float() for m in maps], with_input=official)
    write_json(args.metrics, {
        "encoder": params.encoder,
        "feature_set": params.encoders.feature_set,
        "cached_images": int(len(real)),
        "cache_seconds": round(cache_seconds, 2),
        "cache_mb": round(sum(m.numel() * m.element_size() for m in maps) / 2**20, 1),
        "feature_groups": len(groups),
        "kernel_problems": int(sum(g.shape[0] for g in groups.values())),
        **timing,
        **mae_record,
    })
    print(f"cache_features: {params.encoder}: {len(real)} images cached in {cache_seconds:.1f} s; positives per "
          f"step {timing['positives_ms_cached']:.1f} ms cached vs {timing['positives_ms_reencoded']:.1f} ms re-encoded")


if __name__ == "__main__":
    cli.run(main)
