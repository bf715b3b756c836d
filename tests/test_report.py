"""The README results blocks are generated from metrics files and from `dvc exp show --json`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftin.exps import ablation_markdown, runs, spread_markdown
from driftin.report import (END, REACH_MARGIN, SEEDS_END, SEEDS_START, START, first_reaching, reach_markdown,
                            results_markdown, update_readme)

# Recorded `dvc exp show --json` (DVC 3.67) after `dvc exp run --queue -S seed=0,1,2 && dvc queue start` in a
# stand-in repository whose one stage writes metrics/fid.json and train_*.json in the pipeline's layout.
EXP_SHOW = Path(__file__).parent / "fixtures" / "exp_show.json"


def scores(fid: float, **extra) -> dict:
    m = {"fid": fid, "fid_lo": fid - 1, "fid_hi": fid + 1.5, "kid": 4e-5, "kid_lo": -1e-5, "kid_hi": 9e-5,
         "precision": 0.5, "recall": 0.4, "class_entropy": 0.9, "class_entropy_lo": 0.88, "class_entropy_hi": 0.92,
         "confidence": 0.6, "confidence_lo": 0.55, "confidence_hi": 0.65}
    return {**m, **extra}


def fake_metrics(tmp_path):
    real = scores(0.2, recognisability=0.991, recognisability_lo=0.985, recognisability_hi=0.996)
    files = {
        "fid": {"ddpm": scores(12.5), "drift": scores(9.25), "real_test": real, "noise": scores(400.0),
                "extractor": "evaluator", "evaluator_accuracy": 0.9912, "num_samples": 100},
        "benchmark": {"ddim_steps": 50, "device": {"device_name": "cpu-x", "torch": "2", "torch_threads": 2},
                      "by_batch": {"bs8": {"best": {"drift_images_per_s": 400.0, "drift_mode": "compile",
                                                    "ddpm_images_per_s": 8.0, "ddpm_mode": "eager_fp32",
                                                    "ratio": 50.0}}}},
        "train_ddpm": {"steps": 10, "batch_size": 4, "train_seconds": 3.0, "images_per_s": 13.0},
        "train_drift": {"steps": 7, "batch_size": 4, "train_seconds": 2.0, "images_per_s": 14.0, "encoder": "mae"},
        # The samples were drawn with fewer DDIM steps than the benchmark timed.
        "sample_ddpm": {"nfe": 20, "num_samples": 100},
        "sample_drift": {"nfe": 1, "num_samples": 100},
    }
    for name, obj in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    return tmp_path


def test_tables_carry_the_metrics_and_their_intervals(tmp_path):
    text = results_markdown(fake_metrics(tmp_path))
    assert "| drifting (mae features) | 1 | 7 | 9.25 [8.25, 10.75] | 4e-05 [-1e-05, 9e-05] |" in text
    assert "| real (held-out) | - | - | 0.20 [-0.80, 1.70] |" in text
    assert "| 0.991 [0.985, 0.996] |" in text  # recognisability of held-out real images
    assert "| DDPM (DDIM) | 20 | 10 |" in text  # the samples' NFE, not benchmark.ddim_steps
    assert "DDIM-50 images/s" in text  # the speed table keeps the benchmark's
    assert "| 8 | 400.0 (compile) | 8.00 (eager_fp32) | 50x |" in text
    assert "99.1%" in text


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\n{SEEDS_START}\nseeds\n{SEEDS_END}\noutro\n")
    update_readme(readme, "new")
    update_readme(readme, "spread", SEEDS_START, SEEDS_END)
    assert readme.read_text() == f"intro\n{START}\nnew\n{END}\n{SEEDS_START}\nspread\n{SEEDS_END}\noutro\n"
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="results"):
        update_readme(tmp_path / "bare.md", "new")


def test_runs_are_the_experiments_of_a_recorded_exp_show():
    found = runs(json.loads(EXP_SHOW.read_text()))
    assert sorted(r.params["seed"] for r in found) == [0, 1, 2]
    assert all("metrics/fid.json" in r.metrics for r in found)


def test_spread_is_mean_and_sample_std_over_seeds():
    show = json.loads(EXP_SHOW.read_text())
    fids = [r.metrics["metrics/fid.json"]["drift"]["fid"] for r in runs(show)]
    mean = sum(fids) / 3
    std = (sum((f - mean) ** 2 for f in fids) / 2) ** 0.5
    text = spread_markdown(show)
    assert "over 3 seeds (0, 1, 2" in text
    assert f"| drifting | {mean:.2f} ± {std:.2f} |" in text
    assert "| real (held-out) |" in text and text.count("\n| ") == 5  # header + 4 models


def test_spread_groups_runs_that_differ_in_more_than_the_seed():
    show = json.loads(EXP_SHOW.read_text())
    exp = show[1]["experiments"][0]["revs"][0]
    exp["data"]["params"]["params.yaml"]["data"]["drift"]["steps"] = 720
    text = spread_markdown(show)
    assert text.count("Mean ± standard deviation") == 2 and "`drift.steps=720`" in text


def test_cli_writes_the_seeds_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{SEEDS_START}\n{SEEDS_END}\n")
    subprocess.run([sys.executable, "-m", "driftin.report", "--exps", "--exp-show-json", str(EXP_SHOW),
                    "--readme", str(readme)], check=True)
    assert "| drifting |" in readme.read_text()


def test_ablation_has_a_row_per_experiment_with_the_params_that_differ():
    show = json.loads(EXP_SHOW.read_text())
    found = runs(show)
    exp = show[1]["experiments"][0]["revs"][0]
    exp["data"]["params"]["params.yaml"]["data"]["conditional"] = True
    text = ablation_markdown(show)
    lines = text.splitlines()
    assert lines[0].startswith("| experiment | `conditional` | `seed` | DDPM FID | drifting FID |")
    assert len(lines) == 2 + len(found)
    drift_fid = found[0].metrics["metrics/fid.json"]["drift"]["fid"]
    assert f"| {drift_fid:.2f} |" in lines[2]


def curve(*points):
    return [{"step": s, "train_seconds": t, "fid": f, "fid_lo": f - 1, "fid_hi": f + 1, "kid": 0.5, "kid_lo": 0.4,
             "kid_hi": 0.6} for s, t, f in points]


def test_reach_table_reads_the_first_point_at_or_below_each_target():
    curves = {"ddpm": curve((60, 30.0, 90.0), (120, 61.0, 70.0), (180, 92.0, 60.0)),
              "drift": curve((60, 50.0, 65.0), (120, 101.0, 50.0), (180, 150.0, 45.0))}
    text = reach_markdown(curves, floor=10.0)
    assert first_reaching(curves["drift"], 60.0)["step"] == 120
    # 2 x 10 + margin: neither gets there
    assert f"| 2 x floor + {REACH_MARGIN:g} = {20 + REACH_MARGIN:.1f} | not in 180 | - | not in 180 | - |" in text
    # DDPM's final FID (60): drifting first at or below it at step 120, 101 s
    assert "| DDPM (DDIM)'s final, 60.0 | 180 | 92 s | 120 | 101 s |" in text
    assert "| drifting's final, 45.0 | not in 180 | - | 180 | 150 s |" in text


def test_reach_table_is_empty_until_the_run_exists():
    text = reach_markdown({"ddpm": [], "drift": []}, floor=None)
    assert text.startswith("Not run yet")
    assert text.count("\n| ") == 4 and "| DDPM's final FID |" in text


def test_results_carry_the_curve_section_when_the_run_has_curves(tmp_path):
    (tmp_path / "m").mkdir()
    metrics = fake_metrics(tmp_path / "m")
    plots = tmp_path / "p"
    for kind, points in (("ddpm", ((5, 1.0, 30.0), (10, 2.0, 12.5))), ("drift", ((5, 1.5, 20.0), (7, 2.0, 9.25)))):
        rows = curve(*points)
        (plots / f"train_{kind}/plots/custom").mkdir(parents=True)
        (plots / f"train_{kind}/plots/custom/eval.json").write_text(json.dumps(rows))
        train = json.loads((metrics / f"train_{kind}.json").read_text())
        train["curve"] = {"points": 2, "samples": 50, "eval_seconds": 4.0, "eval_share": 0.2, "final": rows[-1],
                          "real_floor": {"fid": 1.5}}
        (metrics / f"train_{kind}.json").write_text(json.dumps(train))
    text = results_markdown(metrics, plots)
    assert "first 50 of the same noise vectors" in text and "score 1.50 there" in text
    assert "| drifting | 2 | 9.25 [8.25, 10.25] | 0.500 [0.400, 0.600] | 4 s (20.0% of the stage) |" in text
    assert "| DDPM (DDIM)'s final, 12.5 | 10 | 2 s | 7 | 2 s |" in text
