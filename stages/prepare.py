"""Stage `prepare`: the configured dataset -> uint8 train/test arrays under data/prepared/."""
from pathlib import Path

from driftin import cli
from driftin.config import load_params
from driftin.datasets import load_dataset, require_images
from driftin.fidelity import images_needed
from driftin.files import save_npz, write_json


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    args = p.parse_args()
    params = load_params(args.params)
    d = params.data
    out = Path(args.out)
    splits = {}
    for split, num in (("train", d.train_samples), ("test", d.test_samples)):
        splits[split] = ds = load_dataset(d.dataset, split=split, image_size=d.image_size, root=d.root,
                                          num_samples=num, seed=params.seed, download=d.download,
                                          verify_checksums=d.verify_checksums)
        # A folder's split sizes are known only now: check them here, not after training, in the fid stage.
        needed, why = images_needed()
        require_images(len(ds.images), needed, split=split, dataset=d.dataset, root=d.root, why=why)
    summary = {}
    for split, ds in splits.items():
        save_npz(out / f"{split}.npz", images=ds.images, labels=ds.labels, class_names=list(ds.class_names))
        summary[split] = {"images": int(len(ds.images)), "classes": len(ds.class_names)}
        print(f"prepare: {split}: {len(ds.images)} images of {d.image_size}x{d.image_size}, "
              f"{len(ds.class_names)} classes -> {out / f'{split}.npz'}")
    write_json(args.metrics, {"dataset": d.dataset, **summary})


if __name__ == "__main__":
    cli.run(main)
