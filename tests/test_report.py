"""The README results block is generated from metrics files."""
import json

import pytest

from driftin.report import END, START, results_markdown, update_readme


def fake_metrics(tmp_path):
    m = {"fid": 12.5, "kid_mean": 0.1, "kid_std": 0.01, "precision": 0.5, "recall": 0.4}
    files = {
        "fid": {"ddpm": m, "drift": {**m, "fid": 9.25}, "real_test": m, "noise": m, "extractor": "evaluator",
                "num_samples": 100},
        "benchmark": {"ddim_steps": 50, "device": {"device_name": "cpu-x", "torch": "2", "torch_threads": 2},
                      "by_batch": {"bs8": {"best": {"drift_images_per_s": 400.0, "drift_mode": "compile",
                                                    "ddpm_images_per_s": 8.0, "ddpm_mode": "eager_fp32",
                                                    "ratio": 50.0}}}},
        "train_ddpm": {"steps": 10, "batch_size": 4, "train_seconds": 3.0, "images_per_s": 13.0},
        "train_drift": {"steps": 7, "batch_size": 4, "train_seconds": 2.0, "images_per_s": 14.0, "encoder": "mae"},
        "evaluator": {"val_accuracy": 0.9},
        # The samples were drawn with fewer DDIM steps than the benchmark timed.
        "sample_ddpm": {"nfe": 20, "num_samples": 100},
        "sample_drift": {"nfe": 1, "num_samples": 100},
    }
    for name, obj in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    return tmp_path


def test_tables_carry_the_metrics(tmp_path):
    text = results_markdown(fake_metrics(tmp_path))
    assert "| drifting (mae features) | 1 | 7 | 9.25 |" in text
    assert "| DDPM (DDIM) | 20 | 10 | 12.50 |" in text  # the samples' NFE, not benchmark.ddim_steps
    assert "DDIM-50 images/s" in text  # the speed table keeps the benchmark's
    assert "| 8 | 400.0 (compile) | 8.00 (eager_fp32) | 50x |" in text
    assert "90.0%" in text


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, "new")
    assert readme.read_text() == f"intro\n{START}\nnew\n{END}\noutro\n"
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="results"):
        update_readme(tmp_path / "bare.md", "new")
