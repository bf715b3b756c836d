"""The README's results section, generated from metrics/ (never typed by hand).

    python -m driftin.report                 # print the tables
    python -m driftin.report --readme README.md   # rewrite the block between the results markers
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(metrics: Path, name: str) -> dict:
    return json.loads((metrics / f"{name}.json").read_text())


def results_markdown(metrics: Path = Path("metrics")) -> str:
    fid, bench = _load(metrics, "fid"), _load(metrics, "benchmark")
    train = {k: _load(metrics, f"train_{k}") for k in ("ddpm", "drift")}
    ev = _load(metrics, "evaluator")
    nfe = {k: _load(metrics, f"sample_{k}")["nfe"] for k in ("ddpm", "drift")}  # what the FID samples used
    steps = bench["ddim_steps"]  # what the speed rows used
    space = "Inception-v3" if fid["extractor"] == "inception" else (
        f"the trained evaluator's features (held-out accuracy {ev.get('val_accuracy', float('nan')):.1%})")
    batches = sorted(bench["by_batch"], key=lambda b: int(b[2:]))
    lines = [
        f"Quality: {fid['num_samples']} samples per model, FID/KID/precision/recall in {space}, against the "
        "training set. `real (held-out)` is the floor a perfect generator would reach, `noise` a ceiling.",
        "",
        "| model | NFE | train steps | FID | KID | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("DDPM (DDIM)", fid["ddpm"], nfe["ddpm"], train["ddpm"]["steps"]),
            (f"drifting ({train['drift'].get('encoder', '?')} features)", fid["drift"], nfe["drift"],
             train["drift"]["steps"]),
            ("real (held-out)", fid["real_test"], "-", "-"), ("uniform noise", fid["noise"], "-", "-")]
    for name, m, nfe, st in rows:
        lines.append(f"| {name} | {nfe} | {st} | {m['fid']:.2f} | {m['kid_mean']:.4f} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} |")
    device = bench["device"]
    lines += [
        "",
        f"Speed on {device['device_name']} (torch {device['torch']}, {device['torch_threads']} threads), best mode per "
        "model, median of the benchmark's repeats:",
        "",
        f"| batch | drift images/s | DDIM-{steps} images/s | speed ratio |",
        "|---|---|---|---|",
    ]
    for b in batches:
        best = bench["by_batch"][b].get("best")
        if best:
            lines.append(f"| {b[2:]} | {best['drift_images_per_s']:.1f} ({best['drift_mode']}) | "
                         f"{best['ddpm_images_per_s']:.2f} ({best['ddpm_mode']}) | {best['ratio']:.0f}x |")
    lines += [
        "",
        "Training cost (this run):",
        "",
        "| model | steps | batch | wall time | images/s |",
        "|---|---|---|---|---|",
    ]
    for k, t in train.items():
        lines.append(f"| {k} | {t['steps']} | {t['batch_size']} | {t['train_seconds']:.0f} s | "
                     f"{t['images_per_s']:.0f} |")
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no '{START}' ... '{END}' block to fill")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{block}\n{END}", text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", default="metrics", type=Path)
    p.add_argument("--readme", type=Path, help="rewrite this file's results block instead of printing")
    args = p.parse_args()
    block = results_markdown(args.metrics)
    if args.readme:
        update_readme(args.readme, block)
    else:
        print(block)


if __name__ == "__main__":
    main()
