"""End to end: the real `dvc repro`, `dvc exp run -S encoder=pixel`, `dvc metrics diff`, resume after a kill, CPU
determinism down to the bytes of every cached output, and no stale results (an edited module or image re-runs
its stages from scratch), all on micro params in throw-away git copies of this repository."""
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import env, make_repo, merge, micro_params, sh, stage_args, toy_images

pytestmark = pytest.mark.slow

TIMING_KEYS = {"train_seconds", "images_per_s", "seconds", "cache_seconds", "positives_ms_cached",
               "positives_ms_reencoded", "positives_speedup", "eval_seconds", "eval_share"}


def read(repo: Path, rel: str):
    return json.loads((repo / rel).read_text())


def without_timing(d: dict) -> dict:
    return {k: without_timing(v) if isinstance(v, dict) else v for k, v in d.items() if k not in TIMING_KEYS}


def test_repro_runs_every_stage(micro_repo):
    fid = read(micro_repo, "metrics/fid.json")
    scores = {"fid", "kid", "class_entropy", "confidence"}
    # Conditional micro run: generated samples carry their requested classes, so they get recognisability too.
    for model in ("ddpm", "drift", "real_test", "noise"):
        with_labels = scores | {"recognisability"} if model != "noise" else scores
        assert set(fid[model]) == {f"{s}{e}" for s in with_labels for e in ("", "_lo", "_hi")} | {"precision", "recall"}
        assert all(fid[model][f"{s}_lo"] <= fid[model][f"{s}_hi"] for s in with_labels)
    assert fid["evaluator_accuracy"] == read(micro_repo, "metrics/evaluator.json")["heldout_accuracy"]
    assert (micro_repo / "plots/evaluator_confusion.csv").read_text().startswith("actual,predicted\n")
    bench = read(micro_repo, "metrics/benchmark.json")
    assert set(bench["by_batch"]) == {"bs1", "bs2"}
    assert bench["by_batch"]["bs1"]["best"]["ratio"] > 1  # one NFE beats five
    rows = (micro_repo / "plots/benchmark.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header + model x mode x batch
    for name in ("grid.png", "speed.gif", "batch.gif", "ddpm_training.png", "drift_training.png", "fid.png",
                 "benchmark.png", "curves.png"):
        assert (micro_repo / "plots/images" / name).stat().st_size > 1000, name
    assert read(micro_repo, "metrics/train_ddpm.json")["steps"] == 6
    # Guidance: CFG doubles DDPM's network evaluations (counted, not assumed); one per drifting sample at any alpha.
    ddpm_s, drift_s = read(micro_repo, "metrics/sample_ddpm.json"), read(micro_repo, "metrics/sample_drift.json")
    assert (ddpm_s["guidance"], ddpm_s["nfe"], drift_s["alpha"], drift_s["nfe"]) == (2.0, 10, 2.0, 1)
    sweep = read(micro_repo, "metrics/guidance.json")
    assert set(sweep["ddpm"]) == {"w1", "w2"} and set(sweep["drift"]) == {"alpha1", "alpha2"}
    assert (sweep["ddpm"]["w1"]["nfe"], sweep["ddpm"]["w2"]["nfe"]) == (5, 10)
    assert (micro_repo / "plots/guidance_drift.csv").read_text().startswith("guidance,nfe,fid,")
    assert read(micro_repo, "metrics/train_drift.json")["encoder"] == "mae"
    status = sh(micro_repo, "dvc", "status").stdout
    assert "up to date" in status, status


def test_the_curves_last_point_is_the_fid_stages_figure(micro_repo):
    """eval_samples = evaluate.num_samples in the micro params: the curve's last point scores the same weights on the
    same noise, classes and guidance with the same judge as sample + fid, so the figures must be equal."""
    fid = read(micro_repo, "metrics/fid.json")
    for kind, steps in (("ddpm", 6), ("drift", 4)):
        curve = read(micro_repo, f"plots/train_{kind}/plots/custom/eval.json")
        assert [p["step"] for p in curve] == list(range(2, steps + 1, 2))
        assert all(p["train_seconds"] <= q["train_seconds"] for p, q in zip(curve, curve[1:]))
        last = curve[-1]
        for score in ("fid", "kid", "recognisability"):
            for key in (score, f"{score}_lo", f"{score}_hi"):
                assert last[key] == pytest.approx(fid[kind][key], rel=1e-6, abs=1e-9), (kind, key)
        train = read(micro_repo, f"metrics/train_{kind}.json")
        assert train["curve"]["points"] == len(curve) and train["curve"]["final"]["fid"] == last["fid"]
        assert train["curve"]["real_floor"]["fid"] == pytest.approx(fid["real_test"]["fid"], rel=1e-6)
        # DVCLive: the live summary ends at the last step, one TSV row per logged step
        live = read(micro_repo, f"plots/train_{kind}/metrics.json")
        assert live["step"] == steps and live["eval"]["fid"] == last["fid"]
        loss = (micro_repo / f"plots/train_{kind}/plots/metrics/loss.tsv").read_text().splitlines()
        assert loss[0] == "step\tloss" and len(loss) == 1 + steps


def test_finished_training_leaves_no_checkpoint(micro_repo):
    assert not list((micro_repo / "checkpoints").glob("*/last.pt"))


def test_every_artefact_loads_weights_only(micro_repo):
    for rel in ("data/models/ddpm.pt", "data/models/drift.pt", "data/features/encoder.pt", "data/features/real.pt",
                "data/eval/evaluator.pt", "assets/encoder/mae.pt"):
        assert torch.load(micro_repo / rel, weights_only=True), rel


def test_editing_an_imported_module_retrains_from_step_0(micro_repo):
    """training_stage.py is imported by the two training scripts only (and was no declared dep of either):
    editing it must list exactly those stages and re-run them from scratch."""
    module = micro_repo / "src/driftin/training_stage.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(sh(micro_repo, "dvc", "status", "--json").stdout)
        assert set(status) == {"train_ddpm", "train_drift"}, status
        run = sh(micro_repo, "dvc", "repro", "train_ddpm")
        assert "Running stage 'train_ddpm'" in run.stdout
        metrics = read(micro_repo, "metrics/train_ddpm.json")
        assert metrics["resumed_from_step"] == 0 and metrics["steps"] == 6
    finally:
        module.write_text(original)
        sh(micro_repo, "git", "checkout", "HEAD", "--", ".")
        sh(micro_repo, "dvc", "checkout", "--force")


def test_folder_images_are_tracked(tmp_path):
    """Adding or removing images under data.root makes `dvc status` list prepare."""
    params = merge(micro_params(), {"data": {"dataset": "folder", "root": "data/raw/toy"}})
    repo = make_repo(tmp_path, params)
    images, labels = toy_images(120, seed=0, size=16)
    for i, (image, label) in enumerate(zip(images, labels)):
        (repo / f"data/raw/toy/c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(repo / f"data/raw/toy/c{label}/{i}.png")
    sh(repo, "dvc", "repro", "prepare")
    assert "up to date" in sh(repo, "dvc", "status", "prepare").stdout
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(repo / f"data/raw/toy/c{labels[0]}/new.png")
    assert "prepare" in json.loads(sh(repo, "dvc", "status", "prepare", "--json").stdout)


def test_exp_run_pixel_changes_drift_only(micro_repo):
    run = sh(micro_repo, "dvc", "exp", "run", "-S", "encoder=pixel")
    assert "Running stage 'train_ddpm'" not in run.stdout
    assert "Running stage 'train_drift'" in run.stdout
    diff = json.loads(sh(micro_repo, "dvc", "metrics", "diff", "--json").stdout)
    fid_diff = diff["metrics/fid.json"]
    assert any(k.startswith("drift.") for k in fid_diff), fid_diff
    assert not any(k.startswith("ddpm.") for k in fid_diff), fid_diff
    assert diff["metrics/train_drift.json"]["encoder"]["new"] == "pixel"
    shown = sh(micro_repo, "dvc", "exp", "show", "--json").stdout
    assert "pixel" in shown


def test_killed_training_resumes_from_checkpoint(tmp_path):
    # No quality curve: this is about the kill (resuming the curve is tests/test_trainer.py's).
    params = merge(micro_params(), {"ddpm": {"steps": 400, "checkpoint_every": 2, "eval_every": 0}})
    repo = make_repo(tmp_path, params)
    sh(repo, "dvc", "repro", "prepare")
    proc = subprocess.Popen(["python", "stages/train_ddpm.py", *stage_args("train_ddpm.py")], cwd=repo, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and ckpt is None:
        found = list((repo / "checkpoints").glob("train_ddpm-*/last.pt"))
        ckpt = found[0] if found else None
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # no chance to save: only the periodic checkpoint survives
    proc.wait()
    saved = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < saved < 400
    sh(repo, "dvc", "repro", "train_ddpm")
    metrics = read(repo, "metrics/train_ddpm.json")
    assert metrics["resumed_from_step"] >= saved and metrics["steps"] == 400
    assert not ckpt.parent.exists()  # the outputs are written: nothing left to resume


def cached_out_hashes(lock: str) -> dict[str, str]:
    """path -> md5 of every DVC-cached output (under data/) in a dvc.lock."""
    return {out["path"]: out["md5"] for stage in yaml.safe_load(lock)["stages"].values()
            for out in stage.get("outs", []) if out["path"].startswith("data/")}


def test_same_params_same_metrics_and_bytes(micro_repo, tmp_path):
    """A second copy, trained from scratch with its own checkpoints and DVC cache, reproduces every metric
    except wall-clock timings, and every cached output byte for byte (same DVC hashes), so a shared cache or a
    re-run upstream stage leaves downstream stages up to date. The baseline is committed at HEAD of the micro repo."""
    repo = make_repo(tmp_path, micro_params())
    sh(repo, "dvc", "repro", "fid")
    for rel in ("metrics/train_ddpm.json", "metrics/train_drift.json", "metrics/fid.json"):
        baseline = json.loads(sh(micro_repo, "git", "show", f"HEAD:{rel}").stdout)
        assert without_timing(read(repo, rel)) == without_timing(baseline), rel
    ours = cached_out_hashes((repo / "dvc.lock").read_text())
    baseline = cached_out_hashes(sh(micro_repo, "git", "show", "HEAD:dvc.lock").stdout)
    assert set(ours) >= {"data/prepared", "data/models/ddpm.pt", "data/models/drift.pt", "data/features",
                         "data/samples/ddpm.npz", "data/eval"}
    assert ours == {k: baseline[k] for k in ours}


def test_two_process_ddp_training_stages(tmp_path):
    """Both training stages under `driftin.launch --nproc-per-node 2`, i.e. torchrun (gloo on CPU): they finish, and rank 0 alone
    writes the outputs."""
    params = merge(micro_params(), {"ddpm": {"nproc_per_node": 2}, "drift": {"nproc_per_node": 2}})
    repo = make_repo(tmp_path, params)
    run = sh(repo, "dvc", "repro", "train_ddpm", "train_drift")
    assert "--nproc-per-node 2" in run.stdout
    for kind in ("ddpm", "drift"):
        metrics = read(repo, f"metrics/train_{kind}.json")
        assert metrics["world_size"] == 2 and metrics["steps"] == params[kind]["steps"]
        assert (repo / f"data/models/{kind}.pt").is_file()
