"""Spread over seeds: the runs of `dvc exp show --json`, grouped by everything but the seed, as mean +/- std tables.

    dvc exp run --queue -S seed=0,1,2 && dvc queue start     # three seeds of the current params
    python -m driftin.report --exps --readme README.md        # their spread, into the README

Within one run, each score's bootstrap interval says how much another set of samples would move it; across seeds,
this table says how much another training run would (initialisation, data order, and all that follows).
"""
from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MODELS = (("ddpm", "DDPM (DDIM)"), ("drift", "drifting"), ("real_test", "real (held-out)"), ("noise", "uniform noise"))
SCORES = (("fid", "FID", 2), ("kid", "KID", 3), ("precision", "precision", 3), ("recall", "recall", 3),
          ("class_entropy", "class entropy", 3), ("confidence", "confidence", 3),
          ("recognisability", "recognisability", 3))


@dataclass(frozen=True)
class Run:
    name: str
    params: dict  # params.yaml as DVC read it
    metrics: dict  # metrics file path -> its content


def exp_show() -> list:
    """`dvc exp show --json` of the repository in the working directory."""
    out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def runs(show: list) -> list[Run]:
    """The experiments in `dvc exp show --json` output (each one's newest revision; failed or queued ones skipped).
    Baseline commits are left out: their results are usually one of the experiments again."""
    found = []
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            if rev.get("error") or not data.get("metrics"):
                continue
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            metrics = {path: m.get("data", {}) for path, m in data["metrics"].items()}
            found.append(Run(rev.get("name") or exp.get("name") or rev["rev"][:7], params, metrics))
    return found


def _without_seed(params: dict) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True)


def _flat(d: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def number(x: float, decimals: int) -> str:
    """Fixed decimals, or 2 significant digits for what they would print as zero (a KID of 4e-5, not 0.000)."""
    return f"{x:.{decimals}f}" if x == 0 or abs(x) >= 10 ** -decimals else f"{x:.2g}"


def _mean_std(values: Sequence[float], decimals: int) -> str:
    if len(values) < 2:
        return number(values[0], decimals)
    return f"{number(statistics.fmean(values), decimals)} ± {number(statistics.stdev(values), decimals)}"


def group_table(group: Sequence[Run]) -> list[str]:
    """Markdown rows: one per model, mean +/- sample std over the group's seeds of every score it has."""
    fids = [r.metrics.get("metrics/fid.json", {}) for r in group]
    present = [(k, label, d) for k, label, d in SCORES
               if any(k in f.get(m, {}) for f in fids for m, _ in MODELS)]
    lines = ["| model | " + " | ".join(label for _, label, _ in present) + " |",
             "|---" * (len(present) + 1) + "|"]
    for model, label in MODELS:
        cells = []
        for key, _, decimals in present:
            values = [f[model][key] for f in fids if key in f.get(model, {})]
            cells.append(_mean_std(values, decimals) if len(values) == len(fids) else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def spread_markdown(show: list) -> str:
    """The mean +/- std tables of every group of experiments that differ only in `seed`."""
    groups: dict[str, list[Run]] = {}
    for run in runs(show):
        groups.setdefault(_without_seed(run.params), []).append(run)
    if not groups:
        raise SystemExit("dvc exp show lists no finished experiments: run e.g. "
                         "`dvc exp run --queue -S seed=0,1,2 && dvc queue start` first")
    flat = {key: dict(_flat(json.loads(key))) for key in groups}
    # The params some groups set differently: each caption names its group's values of those.
    varying = sorted({k for f in flat.values() for k in f if len({repr(g.get(k)) for g in flat.values()}) > 1})
    blocks = []
    for key, group in groups.items():
        seeds = sorted(r.params.get("seed") for r in group)
        changed = [f"`{k}={flat[key].get(k)}`" for k in varying]
        caption = (f"Mean ± standard deviation over {len(group)} seed{'s' if len(group) > 1 else ''} "
                   f"({', '.join(map(str, seeds))}; experiments {', '.join(r.name for r in group)})"
                   f"{', with ' + ', '.join(changed) if changed else ''}:")
        blocks.append("\n".join([caption, "", *group_table(group)]))
    return "\n\n".join(blocks)


def _get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _cell(x, decimals: int) -> str:
    return "-" if x is None else number(x, decimals)


def ablation_markdown(show: list) -> str:
    """One row per experiment: the params that differ between them, then FID and recognisability of both models
    (with the held-out real images' recognisability, the ceiling) and the drift step time; for a README ablation
    table of `dvc exp run -S ...` runs (e.g. conditional=false,true)."""
    found = runs(show)
    if not found:
        raise SystemExit("dvc exp show lists no finished experiments: run e.g. "
                         "`dvc exp run --queue -S conditional=false,true && dvc queue start` first")
    flat = [dict(_flat(r.params)) for r in found]
    varying = sorted({k for f in flat for k in f if len({repr(g.get(k)) for g in flat}) > 1})
    head = ["experiment", *(f"`{k}`" for k in varying), "DDPM FID", "drifting FID", "DDPM recog.", "drifting recog.",
            "real recog.", "drift step (ms)", "drift img/s"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for run, f in zip(found, flat):
        fid, train = run.metrics.get("metrics/fid.json", {}), run.metrics.get("metrics/train_drift.json", {})
        steps, seconds = train.get("steps"), train.get("train_seconds")
        step_ms = seconds / steps * 1e3 if steps and seconds else None
        cells = [run.name, *(str(f.get(k)) for k in varying),
                 _cell(_get(fid, "ddpm.fid"), 2), _cell(_get(fid, "drift.fid"), 2),
                 _cell(_get(fid, "ddpm.recognisability"), 3), _cell(_get(fid, "drift.recognisability"), 3),
                 _cell(_get(fid, "real_test.recognisability"), 3), _cell(step_ms, 0),
                 _cell(train.get("images_per_s"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
