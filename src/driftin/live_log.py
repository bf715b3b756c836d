"""Training curves the DVC way: DVCLive, rank 0 only, inside the pipeline (`dvcyaml=False`: the files are declared
in dvc.yaml like every other output, and no experiment is saved from inside a stage).

A training stage's DVCLive folder holds:
- `metrics.json`: the latest value of everything (the step, the loss, the last curve point's scores), rewritten at
  every logged step, so `dvc exp show` / `dvc metrics show` show a run's progress while it trains;
- `plots/metrics/<name>.tsv`: one row per logged step for each training scalar (loss, lr, drift_norm, ...) and, under
  `eval/`, each curve score;
- `plots/custom/eval.json`: the whole quality curve, one record per evaluation (step, train_seconds, scores with
  intervals), which the dvc.yaml plots draw against step and against wall-clock seconds.
The stage's own summary (metrics/train_<kind>.json) and the model are still written atomically at the end.

Reading these files back (`read_*`) needs no DVCLive import, so render and report stay light.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

EVAL_PLOT = "eval"
# The curve scores logged as step-wise metrics (eval.json keeps every score with its interval); recognisability
# only for conditional generators.
CURVE_SCORES = ("fid", "kid", "class_entropy", "confidence", "recognisability")


class TrainingLog:
    """on_log(kind, row) for trainer.train: "train" rows (history) and "eval" rows (curve points)."""

    def __init__(self, directory: str | Path) -> None:
        from dvclive import Live  # imports all of DVC (~1 s): only the training stages' rank 0 pays it

        self.live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
        self.evals: list[dict[str, float]] = []

    def __call__(self, kind: str, row: dict[str, float]) -> None:
        self.live.step = int(row["step"])
        if kind == "train":
            for name, value in row.items():
                if name != "step":
                    self.live.log_metric(name, value)
        else:
            for name in ("train_seconds", *CURVE_SCORES):
                if row.get(name) is not None:
                    self.live.log_metric(f"eval/{name}", row[name])
            self.evals.append(row)
            self.live.log_plot(EVAL_PLOT, self.evals, x="step", y="fid", title="FID during training")
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()


def read_evals(directory: str | Path) -> list[dict[str, float]]:
    """The quality curve a TrainingLog wrote ([] if the run evaluated nothing)."""
    path = Path(directory) / "plots" / "custom" / f"{EVAL_PLOT}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def read_metrics(directory: str | Path) -> pd.DataFrame:
    """The training scalars a TrainingLog wrote, one column each (curve scores left out), indexed by nothing: a
    `step` column joins them."""
    frames = [pd.read_csv(p, sep="\t") for p in sorted((Path(directory) / "plots" / "metrics").glob("*.tsv"))]
    if not frames:
        raise FileNotFoundError(f"{directory}: no DVCLive metrics (plots/metrics/*.tsv)")
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on="step", how="outer")
    return out.sort_values("step").reset_index(drop=True)
