"""Stage `evaluator`: train the judge for `shapes` once, on images rendered for it alone, and ship it in assets/.

Its DVC deps are committed code and params only, not `data/prepared` (made by `prepare`, in the DVC cache): a fresh
clone then hashes them identically and reuses the committed weights, even on a CPU whose float rounding renders a
pixel of the dataset differently. `shapes` is procedural, so the stage renders its own training and held-out images,
from RNG streams no `prepare` seed uses: the judge never sees the generators' training images. It reads params.yaml
directly (yaml, not driftin.config) so that its import closure, and so its deps, are the evaluator, shapes and
files modules alone. It trains on CPU whatever `device` says: one machine then rebuilds the same bytes, and a GPU
buys little for this small network. `folder` data has no shipped judge: the `reference` stage trains one in the run.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from driftin.evaluator import EvaluatorParams, load_evaluator, per_class_accuracy, predict, train_evaluator
from driftin.files import torch_save, write_csv, write_json
from driftin.shapes import SHAPE_CLASSES, render_shapes

# Far above the streams `prepare` uses for seed s (2s: train, 2s + 1: test), so the two never share an image.
STREAM_OFFSET = 1_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True, help="weights file")
    p.add_argument("--metrics", required=True)
    p.add_argument("--confusion", required=True, help="CSV of (actual, predicted) per held-out image")
    args = p.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    params = EvaluatorParams.from_mapping(raw["evaluator"])
    size = raw["data"]["image_size"]
    if "OMP_NUM_THREADS" not in os.environ:  # every core, as runtime.configure_threads (not imported: see above)
        torch.set_num_threads(os.cpu_count() or 1)

    stream = STREAM_OFFSET + 2 * params.seed
    images, labels = render_shapes(params.train_images, image_size=size, seed=stream)
    heldout, heldout_labels = render_shapes(params.heldout_images, image_size=size, seed=stream + 1)
    start = time.perf_counter()
    state, summary = train_evaluator(images, labels, num_classes=len(SHAPE_CLASSES), params=params, device="cpu")
    seconds = time.perf_counter() - start
    predicted = predict(load_evaluator(state), heldout)

    torch_save(args.out, state)
    write_csv(args.confusion, [{"actual": SHAPE_CLASSES[a], "predicted": SHAPE_CLASSES[b]}
                               for a, b in zip(heldout_labels, predicted)])
    accuracy = float(np.mean(predicted == heldout_labels))
    write_json(args.metrics, {
        **summary, "heldout_accuracy": accuracy, "heldout_images": params.heldout_images,
        "per_class_accuracy": per_class_accuracy(heldout_labels, predicted, SHAPE_CLASSES),
        "train_images": params.train_images, "batch_size": params.batch_size, "train_seconds": round(seconds, 1),
        "image_size": size, "feature_dim": 4 * params.width, "torch_threads": torch.get_num_threads(),
    })
    print(f"evaluator: held-out accuracy {accuracy:.4f} on {len(heldout)} images, {params.steps} steps in "
          f"{seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
