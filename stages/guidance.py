"""Stage `guidance`: the guidance sweep of both conditional generators, FID against recognisability. DDPM samples
with each classifier-free guidance scale of evaluate.sweep.ddpm (two network evaluations per DDIM step
unless the scale is 1), drifting with each alpha of evaluate.sweep.drift (one evaluation at any alpha);
evaluate.sweep.samples samples per point, the same fixed noise and classes as the sample stage, judged like the fid
stage. An unconditional generator has one point, its only setting. A point whose setting is the one the sample
stage used reuses that stage's first evaluate.sweep.samples images (the same noise and classes), not a re-run."""
import time

from driftin import cli
from driftin.benchmark import nfe_per_sample
from driftin.config import load_params
from driftin.files import load_npz, read_json, write_csv, write_json
from driftin.generators import (channels_last_sampler, class_labels, generate, guidance_for, load_generator,
                                num_classes)
from driftin.judge import Judge
from driftin.runtime import configure_threads, resolve_device
from driftin.scores import significant

COLUMNS = ("guidance", "nfe", "fid", "fid_lo", "fid_hi", "kid", "recognisability", "recognisability_lo",
           "recognisability_hi", "class_entropy", "seconds")


def sampled_with(sample_metrics: dict, kind: str) -> dict:
    """The guidance argument the sample stage used (as guidance_for gives it; {} when unconditional)."""
    key = "guidance" if kind == "ddpm" else "alpha"
    return {key: sample_metrics[key]} if key in sample_metrics else {}


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--models", required=True, help="folder holding <model>.pt for each generator")
    p.add_argument("--eval", required=True, help="the reference stage's folder")
    p.add_argument("--samples", required=True, help="folder holding the sample stage's <model>.npz")
    p.add_argument("--sample-metrics", required=True, help="folder holding sample_<model>.json (their setting)")
    p.add_argument("--metrics", required=True)
    p.add_argument("--plots", required=True, help="folder for guidance_<model>.csv")
    args = p.parse_args()
    params = load_params(args.params)
    ev = params.evaluate
    configure_threads()
    device = resolve_device(params.device)
    judge = Judge(args.eval, device=str(device), batch_size=ev.batch_size)
    summary = {}
    for kind in ("ddpm", "drift"):
        values = getattr(ev.sweep, kind)
        model, record = load_generator(f"{args.models}/{kind}.pt", device)
        size, k = record["image_size"], num_classes(record)
        labels = class_labels(range(ev.sweep.samples), k)
        rows = []
        sampled = read_json(f"{args.sample_metrics}/sample_{kind}.json")
        for value in values if k else (1.0,):
            guidance = guidance_for(kind, k, value)
            sample = channels_last_sampler(kind, model, ev.ddim_steps, **guidance)

            t0 = time.perf_counter()
            if sampled_with(sampled, kind) == guidance and sampled["num_samples"] >= ev.sweep.samples:
                images = load_npz(f"{args.samples}/{kind}.npz")["images"][: ev.sweep.samples]
            else:
                images = generate(sample, ev.sweep.samples, image_size=size, seed=params.seed,
                                  batch_size=ev.batch_size, device=device, desc=f"guidance {kind} {value:g}",
                                  num_classes=k)
            seconds = time.perf_counter() - t0
            nfe = nfe_per_sample(model, sample, num_classes=k, image_size=size, seed=params.seed, device=device)
            m = judge.score(images, None if labels is None else labels.numpy(), draws=ev.bootstrap,
                            seed=params.seed, precision_recall_too=False)
            row = {"guidance": value, "nfe": nfe, "seconds": round(seconds, 2),  # seconds: 0-ish when reused
                   **{c: significant(m[c]) for c in COLUMNS if c in m}}
            rows.append({c: row.get(c) for c in COLUMNS})
            print(f"guidance: {kind} {value:g}: FID {m['fid']:.4g}  recognisability "
                  f"{m.get('recognisability', float('nan')):.3f}  ({nfe} NFE, {seconds:.1f} s)")
        write_csv(f"{args.plots}/guidance_{kind}.csv", rows)
        name = "w" if kind == "ddpm" else "alpha"  # the CFG scale / the alpha input
        summary[kind] = {f"{name}{r['guidance']:g}": {c: r[c] for c in ("nfe", "fid", "kid", "recognisability",
                                                                          "class_entropy") if r[c] is not None}
                         for r in rows}
    write_json(args.metrics, {**summary, "samples_per_point": ev.sweep.samples})


if __name__ == "__main__":
    cli.run(main)
