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
from driftin.generators import fixed_noise, load_generator, sampler, to_uint8
from driftin.render import (batch_gif, comparison_grid, plot_benchmark, plot_fid, plot_training_curves,
                            speed_gif)
from driftin.runtime import configure_threads, resolve_device


@torch.no_grad()
def ddim_frames(model, x_T: torch.Tensor, steps: int) -> list[np.ndarray]:
    """The DDIM trajectory as images: x_t as each step sees it, then the final x_0 (one frame per step)."""
    seen = []

    def recording_model(x_t, t):
        seen.append(to_uint8(x_t)[0])
        return model(x_t, t)

    x0 = ddim_sample(recording_model, x_T, num_steps=steps)
    return seen[1:] + [to_uint8(x0)[0]]


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
    p.add_argument("--ddpm-curve", required=True)
    p.add_argument("--drift-curve", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    configure_threads()
    device = resolve_device(params.device)
    out = Path(args.out)
    n = params.render.grid_samples
    samples = {kind: load_npz(f"{args.samples}/{kind}.npz")["images"] for kind in ("ddpm", "drift")}
    # The network evaluations the sample stage used for these images (the speed GIF uses the benchmark's).
    nfe = {kind: read_json(f"{args.sample_metrics}/sample_{kind}.json")["nfe"] for kind in ("ddpm", "drift")}

    size = samples["ddpm"].shape[1]
    scale = max(2, 64 // size)  # small images need more magnification to be seen
    grid = comparison_grid({k: v[:n] for k, v in samples.items()}, scale=scale,
                           labels={"ddpm": f"DDPM ({nfe['ddpm']} DDIM steps)",
                                   "drift": f"Drifting ({nfe['drift']} step{'s' if nfe['drift'] > 1 else ''})"})
    with atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")

    bench = read_json(args.benchmark)
    lat = bench["latency_ms_batch1"]
    ddpm_s, drift_s = fastest_batch1(lat["ddpm"]), fastest_batch1(lat["drift"])
    ddpm_model, _ = load_generator(f"{args.models}/ddpm.pt", device)
    drift_model, _ = load_generator(f"{args.models}/drift.pt", device)
    z = fixed_noise([0], (3, size, size), params.seed).to(device)
    frames = ddim_frames(ddpm_model, z, bench["ddim_steps"])
    speed_gif(frames, to_uint8(sampler("drift", drift_model)(z))[0], ddpm_latency_s=ddpm_s,
              drift_latency_s=drift_s, path=out / "speed.gif", noise_image=to_uint8(z.clamp(-1, 1))[0],
              titles=(f"DDPM (DDIM, {bench['ddim_steps']} steps)", "Drifting (1 step)"),
              device_label=f"{bench['device']['device_name']}, batch 1", size=192)

    per_frame = n
    batches = [samples["drift"][i:i + per_frame] for i in range(0, len(samples["drift"]) - per_frame + 1, per_frame)]
    batch_gif(batches[:8], out / "batch.gif", nrow=int(np.ceil(np.sqrt(per_frame))), scale=scale,
              captions=[f"drift samples {i * per_frame}-{(i + 1) * per_frame - 1}" for i in range(len(batches[:8]))])

    plot_training_curves({"ddpm": args.ddpm_curve}, out / "ddpm_training.png", columns=["loss"])
    plot_training_curves({"drift": args.drift_curve}, out / "drift_training.png",
                         columns=["drift_norm", "energy"], logy=False)
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
