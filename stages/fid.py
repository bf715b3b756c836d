"""Stage `fid`: FID / KID / recognisability (each with a bootstrap 95% interval) and precision / recall of both
generators against the training set, plus two anchors: held-out real images (the floor; with their labels, the
recognisability a perfect generator would reach) and uniform noise (far above any working generator)."""
import time

import numpy as np

from driftin import cli
from driftin.config import load_params
from driftin.files import load_npz, write_json
from driftin.generators import KINDS
from driftin.judge import Judge
from driftin.runtime import configure_threads, resolve_device
from driftin.scores import significant


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--eval", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--samples", required=True, help="folder holding <model>.npz for each generator")
    p.add_argument("--metrics", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    ev = params.evaluate
    configure_threads()
    start = time.perf_counter()
    device = str(resolve_device(params.device))
    judge = Judge(args.eval, device=device, batch_size=ev.batch_size)
    space = judge.space

    test = load_npz(args.test)
    shape = test["images"].shape[1:]
    # A conditional generator's samples carry their requested classes: recognisability is the share the
    # evaluator assigns to them.
    candidates = {kind: (z["images"], z.get("labels")) for kind in KINDS
                  for z in [load_npz(f"{args.samples}/{kind}.npz")]}
    candidates["real_test"] = (test["images"][: ev.num_samples], test["labels"][: ev.num_samples])
    noise = np.random.default_rng(params.seed).integers(0, 256, (ev.num_samples, *shape), np.uint8)
    candidates["noise"] = (noise, None)

    results = {}
    for name, (images, labels) in candidates.items():
        m = judge.score(images, labels, draws=ev.bootstrap, seed=params.seed)
        results[name] = {k: significant(v) for k, v in m.items()}
        print(f"fid: {name:>9}: FID {m['fid']:.4g} [{m['fid_lo']:.4g}, {m['fid_hi']:.4g}]  KID {m['kid']:.3g}  "
              f"P {m['precision']:.3f}  R {m['recall']:.3f}  ({len(images)} images)")
    acc = {"evaluator_accuracy": space["heldout_accuracy"]} if "heldout_accuracy" in space else {}
    write_json(args.metrics, {**results, **acc, "extractor": space["extractor"], "num_samples": ev.num_samples,
                              "bootstrap_draws": ev.bootstrap, "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    cli.run(main)
