"""Stage `fid`: FID / KID / precision / recall of both generators against the training set, plus two anchors:
held-out real images (the floor) and uniform noise (far above any working generator)."""
import numpy as np

from driftin import cli
from driftin.config import load_params
from driftin.files import load_npz, read_json, write_json
from driftin.fidelity import fidelity_from_features, load_reference_features, reference_features
from driftin.generators import KINDS
from driftin.runtime import configure_threads, resolve_device


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
    device = str(resolve_device(params.device))
    space = read_json(f"{args.eval}/extractor.json")
    kw = {"extractor": space["extractor"], "weights_path": space["weights"]}
    phi_ref = load_reference_features(f"{args.eval}/reference.npz", **kw)

    test = load_npz(args.test)["images"][: ev.num_samples]
    shape = test.shape[1:]
    candidates = {kind: load_npz(f"{args.samples}/{kind}.npz")["images"] for kind in KINDS}
    candidates["real_test"] = test
    candidates["noise"] = np.random.default_rng(params.seed).integers(0, 256, (ev.num_samples, *shape), np.uint8)

    results = {}
    for name, images in candidates.items():
        phi = reference_features(images, batch_size=ev.batch_size, device=device, **kw)
        kid = min(ev.kid_subset_size, len(images))
        results[name] = {k: round(float(v), 5) for k, v in
                         fidelity_from_features(phi, phi_ref, kid_subset_size=kid).items()}
        print(f"fid: {name:>9}: FID {results[name]['fid']:.2f}  KID {results[name]['kid_mean']:.4f}  "
              f"P {results[name]['precision']:.3f}  R {results[name]['recall']:.3f}  ({len(images)} images)")
    write_json(args.metrics, {**results, "extractor": space["extractor"], "num_samples": ev.num_samples})


if __name__ == "__main__":
    cli.run(main)
