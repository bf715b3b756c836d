"""The evaluator shipped in assets/evaluator/: it meets the accuracy bar on the pipeline's own held-out images, and
its dvc.lock entry matches the committed code and params, so a fresh clone's `dvc repro` reuses it."""
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from driftin.datasets import load_dataset
from driftin.evaluator import load_evaluator, predict

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = REPO / "assets" / "evaluator" / "evaluator.pt"


def test_heldout_accuracy_meets_the_bar():
    metrics = json.loads((REPO / "metrics" / "evaluator.json").read_text())
    assert metrics["heldout_accuracy"] >= 0.98, metrics
    assert min(metrics["per_class_accuracy"].values()) >= 0.9, metrics["per_class_accuracy"]


def test_it_judges_the_pipelines_test_split():
    """Images from `prepare`'s test stream, which the evaluator never saw (its own streams are disjoint)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    test = load_dataset("shapes", split="test", image_size=params["data"]["image_size"], root="", num_samples=1000,
                        seed=params["seed"], download=False)
    net = load_evaluator(torch.load(WEIGHTS, weights_only=True))
    assert np.mean(predict(net, test.images) == test.labels) >= 0.97
