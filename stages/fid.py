"""Stage `fid`: FID / KID / recognisability (each with a bootstrap 95% interval) and precision / recall of both
generators against the training set, plus two anchors: held-out real images (the floor; with their labels, the
recognisability a perfect generator would reach) and uniform noise (far above any working generator)."""
import time

import numpy as np
import torch

from driftin import cli
from driftin.config import load_params
from driftin.evaluator import load_evaluator
from driftin.files import load_npz, read_json, write_json
from driftin.fidelity import load_reference_features, precision_recall, reference_features
from driftin.generators import KINDS
from driftin.runtime import configure_threads, resolve_device
from driftin.scores import reference_stats, scores_with_intervals, significant


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
    space = read_json(f"{args.eval}/extractor.json")
    kw = {"extractor": space["extractor"], "weights_path": space["weights"]}
    phi_ref = load_reference_features(f"{args.eval}/reference.npz", **kw)
    # Scores on the device: at paper scale (50k samples, 2048-d Inception features) the bootstrap wants a GPU.
    ref = reference_stats(torch.from_numpy(phi_ref).to(device))
    # Recognisability needs the evaluator's classes; Inception's are ImageNet's, not the dataset's.
    head = None
    if kw["extractor"] == "evaluator":
        head = load_evaluator(torch.load(space["weights"], weights_only=True)).head

    test = load_npz(args.test)
    shape = test["images"].shape[1:]
    candidates = {kind: (load_npz(f"{args.samples}/{kind}.npz")["images"], None) for kind in KINDS}
    candidates["real_test"] = (test["images"][: ev.num_samples], test["labels"][: ev.num_samples])
    noise = np.random.default_rng(params.seed).integers(0, 256, (ev.num_samples, *shape), np.uint8)
    candidates["noise"] = (noise, None)

    results = {}
    for name, (images, labels) in candidates.items():
        phi = reference_features(images, batch_size=ev.batch_size, device=device, **kw)  # (N, D)
        phi_t = torch.from_numpy(phi).to(device)
        logits = None if head is None else head.to(device)(phi_t)  # (N, K)
        labels = None if labels is None else torch.from_numpy(labels).to(device)
        m = scores_with_intervals(phi_t, ref, logits=logits, labels=labels, draws=ev.bootstrap, seed=params.seed)
        m.update(precision_recall(phi, phi_ref))
        results[name] = {k: significant(v) for k, v in m.items()}
        print(f"fid: {name:>9}: FID {m['fid']:.4g} [{m['fid_lo']:.4g}, {m['fid_hi']:.4g}]  KID {m['kid']:.3g}  "
              f"P {m['precision']:.3f}  R {m['recall']:.3f}  ({len(images)} images)")
    judge = {"evaluator_accuracy": space["heldout_accuracy"]} if "heldout_accuracy" in space else {}
    write_json(args.metrics, {**results, **judge, "extractor": space["extractor"], "num_samples": ev.num_samples,
                              "bootstrap_draws": ev.bootstrap, "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    cli.run(main)
