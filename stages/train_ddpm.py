"""Stage `train_ddpm`: the shared UNet trained as an epsilon-predicting DDPM (CPU, one GPU, or torchrun DDP)."""
from pathlib import Path

import torch

from driftin import cli
from driftin.conditioning import check_classes
from driftin.config import as_dict, load_params
from driftin.files import load_npz
from driftin.objectives import ddpm_objective
from driftin.runtime import configure_threads, init_distributed, seed_everything
from driftin.training_stage import run_training
from driftin.unet import build_unet


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--live", required=True, help="DVCLive folder: live metrics and the training/quality curves")
    p.add_argument("--eval", required=True, help="the reference stage's folder (the quality curve's judge)")
    p.add_argument("--test", required=True, help="held-out split (the quality curve's real floor)")
    args = p.parse_args()
    params = load_params(args.params)
    cfg = params.ddpm
    configure_threads()
    info, device = init_distributed(params.device)
    seed_everything(params.seed + info.rank)

    data = load_npz(args.data)
    images = torch.from_numpy(data["images"])
    # Conditional: labels 0..K-1 plus the null label K, dropped for a share p_uncond of each batch.
    k = check_classes(params.conditional, data["class_names"], None, args.data)
    overrides = {"dropout": params.unet.dropout, "num_classes": k}
    model = build_unet(params.unet.preset, params.data.image_size, **overrides)
    loss_fn = ddpm_objective(images, cfg.batch_size // info.world_size, device,
                             labels=torch.from_numpy(data["labels"]) if k else None, p_uncond=cfg.p_uncond,
                             fast=cfg.fast)
    run_training(kind="ddpm", script=Path(__file__), params=params, cfg=cfg, model=model,
                 unet_overrides=overrides, loss_fn=loss_fn,
                 identity={"seed": params.seed, "conditional": params.conditional, "unet": as_dict(params.unet),
                           "ddpm": as_dict(cfg)},
                 inputs=[Path(args.data)], out=args.out, metrics=args.metrics, live=args.live, eval_dir=args.eval,
                 test=args.test, info=info, device=device, log_every=max(1, cfg.steps // 200),
                 class_names=[str(c) for c in data["class_names"]] if k else None)


if __name__ == "__main__":
    cli.run(main)
