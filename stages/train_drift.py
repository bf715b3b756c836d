"""Stage `train_drift`: the shared UNet trained as a one-step drifting generator against cached real features
(CPU, one GPU, or torchrun DDP with the kernel problem spanning the global batch)."""
from pathlib import Path

import torch

from driftin import cli
from driftin.conditioning import check_classes
from driftin.config import ConfigError, as_dict, load_params
from driftin.encoders import build_encoder
from driftin.feature_cache import encoder_kwargs, place
from driftin.objectives import conditional_drift_objective, drift_objective
from driftin.runtime import configure_threads, init_distributed, seed_everything
from driftin.training_stage import run_training
from driftin.unet import build_unet


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--features", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--live", required=True, help="DVCLive folder: live metrics and the training/quality curves")
    p.add_argument("--eval", required=True, help="the reference stage's folder (the quality curve's judge)")
    p.add_argument("--test", required=True, help="held-out split (the quality curve's real floor)")
    args = p.parse_args()
    params = load_params(args.params)
    cfg = params.drift
    configure_threads()
    info, device = init_distributed(params.device)
    seed_everything(params.seed + info.rank)

    feats = Path(args.features)
    enc_record = torch.load(feats / "encoder.pt", map_location="cpu", weights_only=True)
    cached = (enc_record["name"], enc_record.get("feature_set", "basic"))
    if cached != (params.encoder, params.encoders.feature_set):
        raise ConfigError(
            f"{feats / 'encoder.pt'} holds the '{cached[0]}' encoder ('{cached[1]}' feature set) but params.yaml "
            f"asks for '{params.encoder}' ('{params.encoders.feature_set}'). Run `dvc repro` (it re-runs "
            "cache_features first) rather than this stage alone."
        )
    encoder = build_encoder(params.encoder, image_size=params.data.image_size,
                            **encoder_kwargs(params, enc_record["mae_state"]))
    encoder = encoder.to(device, memory_format=torch.channels_last)  # see objectives.drift_objective
    # Memory-mapped: each step reads only the rows it draws, and DDP ranks on one machine share the OS page cache
    # instead of each holding the whole cache (~20 GB at paper scale with DINOv2). drift.fast: on the GPU if it fits.
    real = torch.load(feats / "real.pt", map_location="cpu", weights_only=True, mmap=True)
    real["maps"], cache_on = place(real["maps"], device, fast=cfg.fast)
    cond = cfg.conditioning
    if params.conditional and "labels" not in real:
        raise ConfigError(f"{feats / 'real.pt'} has no labels (written by an older cache_features): run `dvc repro`")
    k = check_classes(params.conditional, real.get("class_names", ()), cond.labels_per_step, str(feats / "real.pt"))

    # The generator must not start from a constant output (every sample equal): keep the default init.
    # Conditional: a class label (and null label) plus the guidance strength alpha as inputs.
    overrides = {"dropout": params.unet.dropout, "num_classes": k, "alpha_cond": bool(k)}
    model = build_unet(params.unet.preset, params.data.image_size, **overrides)
    world = info.world_size
    common = dict(image_size=params.data.image_size, temperatures=cfg.temperatures,
                  with_input=params.encoders.feature_set == "official",
                  drift_kwargs={"tau_times_c": cfg.tau_times_c, "affinity_floor": cfg.affinity_floor},
                  group=info.group, device=device, fast=cfg.fast)
    if k:
        loss_fn = conditional_drift_objective(
            encoder, real["maps"], real["labels"], num_classes=k, labels_per_step=cond.labels_per_step,
            batch_size=cfg.batch_size // world, positives=cfg.positives // world, negatives=cond.negatives,
            alpha_range=(1.0, cond.alpha_max), alpha_power=cond.alpha_power, world_size=world, **common)
    else:
        loss_fn = drift_objective(encoder, real["maps"], batch_size=cfg.batch_size // world,
                                  positives=cfg.positives // world, **common)
    run_training(kind="drift", script=Path(__file__), params=params, cfg=cfg, model=model,
                 unet_overrides=overrides, loss_fn=loss_fn,
                 identity={"seed": params.seed, "encoder": params.encoder, "conditional": params.conditional,
                           "unet": as_dict(params.unet),
                           "drift": as_dict(cfg)},
                 inputs=[feats / "encoder.pt", feats / "real.pt"], out=args.out, metrics=args.metrics,
                 live=args.live, eval_dir=args.eval, test=args.test, info=info, device=device,
                 log_every=max(1, cfg.steps // 200),
                 class_names=list(real["class_names"]) if k else None,
                 extra_metrics={"encoder": params.encoder, "feature_set": params.encoders.feature_set,
                                **({"feature_cache_on": cache_on} if cfg.fast else {})})


if __name__ == "__main__":
    cli.run(main)
