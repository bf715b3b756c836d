"""The README's results sections, generated from metrics/ and experiments (never typed by hand).

    python -m driftin.report                        # print the tables of the run in metrics/
    python -m driftin.report --readme README.md     # rewrite the block between the results markers
    python -m driftin.report --exps [--readme README.md]   # mean +/- std over seeds from `dvc exp show --json`
    python -m driftin.report --ablation [--readme README.md]   # one row per experiment (e.g. conditional=false,true)
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from driftin.exps import ablation_markdown, exp_show, number, spread_markdown

START, END = "<!-- results:start -->", "<!-- results:end -->"
SEEDS_START, SEEDS_END = "<!-- seeds:start -->", "<!-- seeds:end -->"
ABLATION_START, ABLATION_END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def _load(metrics: Path, name: str) -> dict:
    return json.loads((metrics / f"{name}.json").read_text())


def _interval(m: dict, key: str, decimals: int) -> str:
    """'value [lo, hi]', each in `decimals` places unless that would print a non-zero score as zero."""
    return f"{number(m[key], decimals)} [{number(m[key + '_lo'], decimals)}, {number(m[key + '_hi'], decimals)}]"


def results_markdown(metrics: Path = Path("metrics")) -> str:
    fid, bench = _load(metrics, "fid"), _load(metrics, "benchmark")
    train = {k: _load(metrics, f"train_{k}") for k in ("ddpm", "drift")}
    nfe = {k: _load(metrics, f"sample_{k}")["nfe"] for k in ("ddpm", "drift")}  # what the FID samples used
    steps = bench["ddim_steps"]  # what the speed rows used
    accuracy = f" (held-out accuracy {fid['evaluator_accuracy']:.1%})" if "evaluator_accuracy" in fid else ""
    space = "Inception-v3" if fid["extractor"] == "inception" else f"the trained evaluator's features{accuracy}"
    batches = sorted(bench["by_batch"], key=lambda b: int(b[2:]))
    recognisable = "class_entropy" in fid["ddpm"]
    lines = [
        f"Quality: {fid['num_samples']} samples per model, FID/KID/precision/recall in {space}, against the "
        "training set, with bootstrap 95% intervals over the samples in brackets. `real (held-out)` is the floor a "
        "perfect generator would reach, `noise` a ceiling.",
    ]
    if recognisable:
        lines[0] += (" Class entropy: the evaluator's predicted-class histogram, 1 = every class equally often; "
                     "confidence: its mean top-class probability; recognisability: the share classified as the "
                     "requested class (real images: their label).")
    header = "| model | NFE | train steps | FID | KID | precision | recall |"
    if recognisable:
        header += " class entropy | confidence | recognisability |"
    lines += ["", header, "|---" * (header.count("|") - 1) + "|"]
    rows = [("DDPM (DDIM)", fid["ddpm"], nfe["ddpm"], train["ddpm"]["steps"]),
            (f"drifting ({train['drift'].get('encoder', '?')} features)", fid["drift"], nfe["drift"],
             train["drift"]["steps"]),
            ("real (held-out)", fid["real_test"], "-", "-"), ("uniform noise", fid["noise"], "-", "-")]
    for name, m, nfe, st in rows:
        row = (f"| {name} | {nfe} | {st} | {_interval(m, 'fid', 2)} | {_interval(m, 'kid', 3)} | "
               f"{m['precision']:.3f} | {m['recall']:.3f} |")
        if recognisable:
            row += (f" {_interval(m, 'class_entropy', 3)} | {_interval(m, 'confidence', 3)} | "
                    f"{_interval(m, 'recognisability', 3) if 'recognisability' in m else '-'} |")
        lines.append(row)
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


def update_readme(readme: Path, block: str, start: str = START, end: str = END) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no '{start}' ... '{end}' block to fill")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", default="metrics", type=Path)
    p.add_argument("--readme", type=Path, help="rewrite this file's results block instead of printing")
    p.add_argument("--exps", action="store_true", help="mean +/- std over the seeds of `dvc exp show`")
    p.add_argument("--ablation", action="store_true", help="one row per experiment of `dvc exp show`")
    p.add_argument("--exp-show-json", type=Path,
                   help="with --exps or --ablation: read this saved `dvc exp show --json` output")
    args = p.parse_args()
    if args.exps or args.ablation:
        show = json.loads(args.exp_show_json.read_text()) if args.exp_show_json else exp_show()
        if args.ablation:
            block, markers = ablation_markdown(show), (ABLATION_START, ABLATION_END)
        else:
            block, markers = spread_markdown(show), (SEEDS_START, SEEDS_END)
    else:
        block, markers = results_markdown(args.metrics), (START, END)
    if args.readme:
        update_readme(args.readme, block, *markers)
    else:
        print(block)


if __name__ == "__main__":
    main()
