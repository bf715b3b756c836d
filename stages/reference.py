"""Stage `reference`: the feature space FID is measured in, and the real data's features in it, computed once.

cifar10: torch-fidelity's Inception-v3. shapes: the evaluator shipped by the `evaluator` stage. folder: an evaluator
trained here, the same way, on the dataset's labels (no shipped judge knows the user's classes). Either evaluator is
a separate network from any drift encoder. data/eval/ then holds everything the judge is: weights, reference
features and extractor.json (what it is, and its held-out accuracy, which `fid` reports next to the scores).
"""
import shutil
from pathlib import Path

import numpy as np
import torch

from driftin import cli
from driftin.config import ConfigError, load_params
from driftin.evaluator import load_evaluator, predict, split_heldout, train_evaluator
from driftin.files import atomic_path, load_npz, read_json, torch_save, write_json
from driftin.fidelity import reference_features
from driftin.runtime import configure_threads, resolve_device, seed_everything


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--evaluator", required=True, help="the shipped shapes evaluator")
    p.add_argument("--evaluator-metrics", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    ev = params.evaluate
    configure_threads()
    device = resolve_device(params.device)
    seed_everything(params.seed)
    train = load_npz(args.data)
    out = Path(args.out)
    weights = str(out / "evaluator.pt")

    if params.data.dataset == "cifar10":
        extractor, weights, judge = "inception", ev.inception_weights, {}
    elif params.data.dataset == "shapes":
        extractor = "evaluator"
        with atomic_path(weights) as tmp:
            shutil.copyfile(args.evaluator, tmp)
        shipped = read_json(args.evaluator_metrics)
        judge = {"evaluator": "shipped", "heldout_accuracy": shipped["heldout_accuracy"]}
        size = load_evaluator(torch.load(weights, weights_only=True)).config.image_size
        if size != params.data.image_size:
            raise ConfigError(f"params.yaml: 'data.image_size' is {params.data.image_size}, but {args.evaluator} "
                              f"judges {size}x{size} images: rebuild it with `dvc repro -f evaluator`")
    else:
        extractor = "evaluator"
        (images, labels), (held, held_labels) = split_heldout(train["images"], train["labels"],
                                                              params.evaluator.heldout_fraction, params.evaluator.seed)
        state, summary = train_evaluator(images, labels, num_classes=len(train["class_names"]),
                                         params=params.evaluator, device=str(device))
        torch_save(weights, state)
        accuracy = float(np.mean(predict(load_evaluator(state), held) == held_labels))
        judge = {"evaluator": "trained in the run", "heldout_accuracy": accuracy, "heldout_images": len(held),
                 **summary}
    # A fixed random subset (folder datasets are stored class by class); all of it if the set is smaller.
    gen = torch.Generator().manual_seed(params.seed)
    subset = torch.randperm(len(train["images"]), generator=gen)[: ev.reference_samples].sort().values.numpy()
    reference = train["images"][subset]
    reference_features(reference, extractor=extractor, weights_path=weights, batch_size=ev.batch_size,
                       device=str(device), path=str(out / "reference.npz"))
    write_json(out / "extractor.json", {"extractor": extractor, "weights": weights, **judge})
    write_json(args.metrics, {"extractor": extractor, "reference_images": int(len(reference)), **judge})
    print(f"reference: {extractor} features of {len(reference)} training images -> {out / 'reference.npz'}")


if __name__ == "__main__":
    cli.run(main)
