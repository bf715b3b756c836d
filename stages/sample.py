"""Stage `sample@<model>`: evaluate.num_samples images from one trained generator (EMA weights), sample i always
from the same fixed noise (and, for a conditional generator, of class i mod K), so both models are compared on
identical inputs. Conditional generators sample with evaluate.guidance.<model> (CFG scale / alpha)."""
import time

from driftin import cli
from driftin.benchmark import nfe_per_sample
from driftin.config import load_params
from driftin.files import save_npz, write_json
from driftin.generators import (channels_last_sampler, class_labels, generate, guidance_for, load_generator,
                                num_classes)
from driftin.runtime import configure_threads, resolve_device


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--generator", required=True, help="a model file written by a training stage")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    ev = params.evaluate
    configure_threads()
    device = resolve_device(params.device)
    model, record = load_generator(args.generator, device)
    kind, size, k = record["kind"], record["image_size"], num_classes(record)
    guidance = guidance_for(kind, k, getattr(ev.guidance, kind))
    sample = channels_last_sampler(kind, model, ev.ddim_steps, **guidance)

    t0 = time.perf_counter()
    images = generate(sample, ev.num_samples, image_size=size, seed=params.seed, batch_size=ev.batch_size,
                      device=device, desc=f"sample {kind}", num_classes=k)
    seconds = time.perf_counter() - t0
    labels = class_labels(range(ev.num_samples), k)
    # The requested classes go with the images: fid measures recognisability against them.
    save_npz(args.out, images=images, **({} if labels is None else {"labels": labels.numpy()}))
    # Network evaluations per sample, counted on one sample rather than assumed: render and the README label
    # these samples with it.
    nfe = nfe_per_sample(model, sample, num_classes=k, image_size=size, seed=params.seed, device=device)
    write_json(args.metrics, {
        "num_samples": int(len(images)), "seconds": round(seconds, 2), "nfe": nfe,
        "conditional": bool(k), **guidance,
    })
    print(f"sample {kind}: {len(images)} images in {seconds:.1f} s")


if __name__ == "__main__":
    cli.run(main)
