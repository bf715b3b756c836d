"""Stage `benchmark`: inference speed of the same UNet as DDPM (DDIM, benchmark.ddim_steps) and as the one-step
drift generator, across execution modes and batch sizes. Compile time is measured separately, never timed in."""
from driftin import cli
from driftin.benchmark import benchmark_matrix, ddim_sampler, device_info, fixed_noise, one_step_sampler, summarize
from driftin.config import load_params
from driftin.files import write_csv, write_json
from driftin.generators import DRIFT_T, load_generator, num_classes
from driftin.runtime import configure_threads, resolve_device


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--models", required=True, help="folder holding <model>.pt for each generator")
    p.add_argument("--metrics", required=True)
    p.add_argument("--plot", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    b = params.benchmark
    configure_threads()
    device = resolve_device(params.device)
    ev = params.evaluate
    rows = []
    for kind in ("ddpm", "drift"):
        # Each generator runs with its own trained weights (same architecture, so the same cost per call), and
        # with the guidance its samples were drawn with: CFG's second evaluation per DDIM step is timed too.
        model, record = load_generator(f"{args.models}/{kind}.pt", device)
        size, k = record["image_size"], num_classes(record)
        sample = (ddim_sampler(b.ddim_steps, k, ev.guidance.ddpm) if kind == "ddpm"
                  else one_step_sampler(DRIFT_T, k, ev.guidance.drift))
        rows += benchmark_matrix(model, {kind: sample}, make_noise=fixed_noise((3, size, size), params.seed),
                                 modes=b.modes, batch_sizes=b.batch_sizes, repeats=b.repeats, warmup=b.warmup,
                                 device=device)
    write_csv(args.plot, rows)
    summary = summarize(rows)
    write_json(args.metrics, {**summary, "device": device_info(device), "ddim_steps": b.ddim_steps})
    for bs, entry in summary["by_batch"].items():
        best = entry.get("best")
        if best:
            print(f"benchmark {bs}: drift {best['drift_images_per_s']:.1f} img/s ({best['drift_mode']}) vs "
                  f"DDIM-{b.ddim_steps} {best['ddpm_images_per_s']:.2f} img/s ({best['ddpm_mode']}): "
                  f"{best['ratio']:.0f}x")


if __name__ == "__main__":
    cli.run(main)
