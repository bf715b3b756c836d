"""Stage `render`: the pictures users come for — DDPM vs drift on identical seeds, the speed GIF paced by the
benchmark's measured latencies, a batch GIF, and charts of training, FID and speed."""
import csv
from pathlib import Path

import numpy as np
import torch

from driftin import cli
from driftin.config import load_params
from driftin.ddpm import ddim_sample
from driftin.files import atomic_path, load_npz, read_json
from driftin.generators import class_labels, fixed_noise, load_generator, num_classes, sampler, to_uint8
from driftin.live_log import read_evals, read_metrics
from driftin.render import (batch_gif, class_grid, comparison_grid, per_class, plot_benchmark, plot_fid,
                            plot_quality_curves, plot_training_curves, speed_gif)
from driftin.runtime import configure_threads, resolve_device


@torch.no_grad()
def ddim_frames(model, x_T: torch.Tensor, steps: int, labels: torch.Tensor | None = None,
                guidance: float = 1.0) -> list[np.ndarray]:
    """The DDIM trajectory as images: x_t as each step sees it, then the final x_0 (one frame per step)."""
    seen = []

    def recording_model(x_t, t, *cond):
        seen.append(to_uint8(x_t)[0])  # under guidance row 0 is the conditional copy of x_t
        return model(x_t, t, *cond)

    null = model.null_label if labels is not None and guidance != 1 else None
    x0 = ddim_sample(recording_model, x_T, num_steps=steps, labels=labels, guidance=guidance, null_label=null)
    return seen[1:] + [to_uint8(x0)[0]]


def grid_titles(kind: str, nfe: int, metrics: dict) -> str:
    """A grid column's title: the sampler, its network evaluations per sample and its guidance."""
    if kind == "ddpm":
        w = metrics.get("guidance")
        return f"DDPM: {nfe} NFE" + ("" if w is None else f", CFG w={w:g}")
    a = metrics.get("alpha")
    return f"Drifting: {nfe} NFE" + ("" if a is None else f", alpha={a:g}")


def fastest_batch1(latencies: dict[str, float]) -> float:
    """Seconds per batch-1 sample in the model's fastest measured mode."""
    return min(latencies.values()) / 1e3


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--samples", required=True, help="folder holding <model>.npz for each generator")
    p.add_argument("--sample-metrics", required=True, help="folder holding sample_<model>.json (the NFE used)")
    p.add_argument("--models", required=True, help="folder holding <model>.pt for each generator")
    p.add_argument("--benchmark", required=True, help="the benchmark stage's metrics (JSON)")
    p.add_argument("--benchmark-plot", required=True, help="the benchmark stage's CSV")
    p.add_argument("--fid", required=True, help="the fid stage's metrics (JSON)")
    p.add_argument("--ddpm-live", required=True, help="train_ddpm's DVCLive folder")
    p.add_argument("--drift-live", required=True, help="train_drift's DVCLive folder")
    p.add_argument("--train-metrics", required=True, help="folder holding train_<model>.json (the curve's floor)")
    args = p.parse_args()
    params = load_params(args.params)
    configure_threads()
    device = resolve_device(params.device)
    out = Path(args.out)
    n = params.render.grid_samples
    npz = {kind: load_npz(f"{args.samples}/{kind}.npz") for kind in ("ddpm", "drift")}
    samples = {kind: z["images"] for kind, z in npz.items()}
    # The network evaluations and guidance the sample stage used for these images (the speed GIF uses the
    # benchmark's timings).
    sample_meta = {kind: read_json(f"{args.sample_metrics}/sample_{kind}.json") for kind in ("ddpm", "drift")}
    nfe = {kind: m["nfe"] for kind, m in sample_meta.items()}
    ddpm_model, ddpm_record = load_generator(f"{args.models}/ddpm.pt", device)
    drift_model, drift_record = load_generator(f"{args.models}/drift.pt", device)
    k = num_classes(drift_record)
    if num_classes(ddpm_record) != k:
        raise ValueError(f"{args.models}: ddpm.pt has {num_classes(ddpm_record)} classes and drift.pt {k}: "
                         "re-run both trainings with the same `conditional`")

    size = samples["ddpm"].shape[1]
    scale = max(2, 64 // size)  # small images need more magnification to be seen
    titles = {kind: grid_titles(kind, nfe[kind], sample_meta[kind]) for kind in samples}
    if k:  # one row per class, the models side by side on the same noise
        m = params.render.columns_per_class
        grid = class_grid({titles[kind]: per_class(samples[kind], npz[kind]["labels"], k, m) for kind in samples},
                          drift_record["meta"]["class_names"], scale=scale)
    else:
        grid = comparison_grid({kind: v[:n] for kind, v in samples.items()}, scale=scale, labels=titles)
    with atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")

    bench = read_json(args.benchmark)
    lat = bench["latency_ms_batch1"]
    ddpm_s, drift_s = fastest_batch1(lat["ddpm"]), fastest_batch1(lat["drift"])
    z = fixed_noise([0], (3, size, size), params.seed).to(device)
    lab = class_labels([0], k)
    lab = None if lab is None else lab.to(device)
    w = sample_meta["ddpm"].get("guidance", 1.0)
    frames = ddim_frames(ddpm_model, z, bench["ddim_steps"], lab, w)
    drift_img = sampler("drift", drift_model, alpha=sample_meta["drift"].get("alpha"))(z, lab)
    speed_gif(frames, to_uint8(drift_img)[0], ddpm_latency_s=ddpm_s,
              drift_latency_s=drift_s, path=out / "speed.gif", noise_image=to_uint8(z.clamp(-1, 1))[0],
              titles=(f"DDPM (DDIM, {bench['ddim_steps']} steps{'' if w == 1 else f', CFG w={w:g}'})",
                      "Drifting (1 step)"),
              device_label=f"{bench['device']['device_name']}, batch 1", size=192)

    per_frame = n
    batches = [samples["drift"][i:i + per_frame] for i in range(0, len(samples["drift"]) - per_frame + 1, per_frame)]
    batch_gif(batches[:8], out / "batch.gif", nrow=int(np.ceil(np.sqrt(per_frame))), scale=scale,
              captions=[f"drift samples {i * per_frame}-{(i + 1) * per_frame - 1}" for i in range(len(batches[:8]))])

    plot_training_curves({"ddpm": read_metrics(args.ddpm_live)}, out / "ddpm_training.png", columns=["loss"])
    plot_training_curves({"drift": read_metrics(args.drift_live)}, out / "drift_training.png",
                         columns=["drift_norm", "energy"], logy=False)
    curves = {kind: read_evals(getattr(args, f"{kind}_live")) for kind in ("ddpm", "drift")}
    floor = read_json(f"{args.train_metrics}/train_ddpm.json").get("curve", {}).get("real_floor", {}).get("fid")
    if any(curves.values()):
        plot_quality_curves({f"{kind} ({nfe[kind]} NFE)": rows for kind, rows in curves.items()},
                            out / "curves.png", floor=floor)
    else:  # eval_every 0 for both: say so in the picture rather than leave a stale one
        plot_quality_curves({}, out / "curves.png")
    fid = read_json(args.fid)
    plot_fid({"real (held-out)": fid["real_test"], "ddpm": {**fid["ddpm"], "nfe": nfe["ddpm"]},
              "drift": {**fid["drift"], "nfe": nfe["drift"]}, "noise": fid["noise"]}, out / "fid.png")
    with open(args.benchmark_plot) as f:
        rows = [{**r, "batch_size": int(r["batch_size"]),
                 "images_per_s": float(r["images_per_s"]) if r["images_per_s"] else None} for r in csv.DictReader(f)]
    plot_benchmark(rows, out / "benchmark.png", title=f"Inference speed on {bench['device']['device_name']}")
    print(f"render: grid, speed.gif, batch.gif and charts -> {out}/")


if __name__ == "__main__":
    cli.run(main)
