"""Stage `sample@<model>`: evaluate.num_samples images from one trained generator (EMA weights), sample i always
from the same fixed noise, so both models are compared on identical inputs."""
import time

import torch

from driftin import cli
from driftin.benchmark import count_nfe
from driftin.config import load_params
from driftin.files import save_npz, write_json
from driftin.generators import fixed_noise, generate, load_generator, sampler
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
    kind, size = record["kind"], record["image_size"]
    # NHWC: oneDNN's convolutions ran DDIM-50 ~1.2x faster on 2 CPU cores (tensor cores want it on GPUs too).
    model = model.to(memory_format=torch.channels_last)
    sample_nchw = sampler(kind, model, ev.ddim_steps)

    def sample(z: torch.Tensor) -> torch.Tensor:
        return sample_nchw(z.contiguous(memory_format=torch.channels_last))

    t0 = time.perf_counter()
    images = generate(sample, ev.num_samples, image_size=size, seed=params.seed, batch_size=ev.batch_size,
                      device=device, desc=f"sample {kind}")
    seconds = time.perf_counter() - t0
    save_npz(args.out, images=images)
    # Network evaluations per sample, counted on one sample rather than assumed: render and the README label
    # these samples with it.
    nfe = count_nfe(model, lambda _, z: sample(z), fixed_noise([0], (3, size, size), params.seed).to(device))
    write_json(args.metrics, {
        "num_samples": int(len(images)), "seconds": round(seconds, 2), "nfe": nfe,
    })
    print(f"sample {kind}: {len(images)} images in {seconds:.1f} s")


if __name__ == "__main__":
    cli.run(main)
