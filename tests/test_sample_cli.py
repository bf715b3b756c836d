"""Sampling outside DVC: `python -m driftin.sample` and driftin.sample.sample on a model file."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from driftin.generators import save_generator
from driftin.sample import sample
from driftin.unet import build_unet


def model_file(path, kind="drift", classes=("a", "b", "c")):
    k = len(classes)
    overrides = {"num_classes": k, "alpha_cond": kind == "drift" and k > 0}
    torch.manual_seed(0)
    net = build_unet("tiny", 8, **overrides)
    meta = {"params": {"evaluate": {"guidance": {"ddpm": 2.0, "drift": 1.5}}}, "steps": 1,
            "class_names": list(classes)}
    save_generator(path, kind=kind, preset="tiny", image_size=8, unet_overrides=overrides, model=net, ema=net,
                   meta=meta)
    return path


@pytest.mark.parametrize("kind", ["drift", "ddpm"])
def test_sample_a_class_by_name_is_deterministic_and_depends_on_the_class(tmp_path, kind):
    path = model_file(tmp_path / "m.pt", kind)
    kw = {"n": 3, "ddim_steps": 2}
    a = sample(path, "b", **kw)
    assert a.shape == (3, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sample(path, 1, **kw))  # by index
    assert np.array_equal(a, sample(path, "b", **kw))  # same call, same images
    assert not np.array_equal(a, sample(path, "c", **kw))
    assert not np.array_equal(a, sample(path, "b", guidance=3.0, **kw))  # guidance reaches the network


def test_bad_requests_name_the_problem(tmp_path):
    path = model_file(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="unknown class 'heart'; this model knows: a, b, c"):
        sample(path, "heart", n=1)
    with pytest.raises(ValueError, match="out of range"):
        sample(path, 3, n=1)
    plain = model_file(tmp_path / "u.pt", classes=())
    with pytest.raises(ValueError, match="unconditional"):
        sample(plain, "a", n=1)
    assert sample(plain, n=2).shape == (2, 8, 8, 3)


def test_command_line_writes_a_png_grid(tmp_path):
    path = model_file(tmp_path / "m.pt")
    out = tmp_path / "x.png"
    proc = subprocess.run([sys.executable, "-m", "driftin.sample", str(path), "--class", "a", "--n", "4",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (2 * (8 * 8 + 2) + 2,) * 2  # 2x2 grid of 8 px images magnified 8x, 2 px padding
    bad = subprocess.run([sys.executable, "-m", "driftin.sample", str(path), "--class", "zebra", "--out",
                          str(tmp_path / "y.png")], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown class 'zebra'" in bad.stderr and not (tmp_path / "y.png").exists()
