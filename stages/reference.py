"""Stage `reference`: the feature space FID is measured in, and the real data's features in it, computed once.

cifar10: torch-fidelity's Inception-v3. shapes / folder: Inception is meaningless there (and unavailable offline), so
a small evaluator classifier is trained on the dataset's labels (a separate network from any drift encoder)."""
from pathlib import Path

import torch

from driftin import cli
from driftin.config import load_params
from driftin.evaluator import train_evaluator
from driftin.files import load_npz, torch_save, write_json
from driftin.fidelity import reference_features
from driftin.runtime import configure_threads, resolve_device, seed_everything


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--data", required=True)
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

    if params.data.dataset == "cifar10":
        extractor, weights, summary = "inception", ev.inception_weights, {}
    else:
        e = ev.evaluator
        state, summary = train_evaluator(train["images"], train["labels"], num_classes=len(train["class_names"]),
                                         steps=e.steps, batch_size=e.batch_size, lr=e.lr, seed=params.seed,
                                         device=str(device))
        extractor, weights = "evaluator", str(out / "evaluator.pt")
        torch_save(weights, state)
    # A fixed random subset (folder datasets are stored class by class); all of it if the set is smaller.
    gen = torch.Generator().manual_seed(params.seed)
    subset = torch.randperm(len(train["images"]), generator=gen)[: ev.reference_samples].sort().values.numpy()
    reference = train["images"][subset]
    reference_features(reference, extractor=extractor, weights_path=weights, batch_size=ev.batch_size,
                       device=str(device), path=str(out / "reference.npz"))
    write_json(out / "extractor.json", {"extractor": extractor, "weights": weights})
    write_json(args.metrics, {"extractor": extractor, "reference_images": int(len(reference)), **summary})
    print(f"reference: {extractor} features of {len(reference)} training images -> {out / 'reference.npz'}")


if __name__ == "__main__":
    cli.run(main)
