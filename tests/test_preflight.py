"""Preflight: every missing file, device or disk problem of the chosen params is listed at once, before any work."""
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest
import timm
import torch
import torchvision
import yaml

from conftest import REPO, env, merge, micro_params, stage_args
from driftin import encoders, preflight
from driftin.config import load_params
from driftin.mae import MAEConfig, MAEEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def params_for(tmp_path, **over):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(merge(micro_params(), over)))
    return load_params(path)


def test_default_params_pass(offline):
    assert preflight.problems(params_for(offline)) == []


def test_every_missing_file_is_listed_at_once(offline):
    params = params_for(offline, encoder="dinov2", data={"dataset": "cifar10", "root": str(offline / "nowhere"),
                                                         "download": False})
    with pytest.raises(preflight.PreflightFailed) as err:
        preflight.check(params)
    message = str(err.value)
    assert "3 problem(s)" in message
    for needle in ("cifar-10-batches-py", "model.safetensors", "weights-inception", "evaluate.inception_weights"):
        assert needle in message, needle
    resnet = params_for(offline, encoder="resnet18")
    assert ["resnet18-f37072fd.pth" in p for p in preflight.problems(resnet)] == [True]


def test_explicit_weights_files_satisfy_it(offline):
    for name in ("resnet.pth", "dino.safetensors", "inception.pth"):
        (offline / name).write_bytes(b"stub")
    (offline / "raw" / "cifar-10-batches-py").mkdir(parents=True)
    for encoder in ("resnet18", "dinov2"):
        params = params_for(offline, encoder=encoder,
                            data={"dataset": "cifar10", "root": str(offline / "raw"), "download": False},
                            encoders={"resnet18": {"weights": str(offline / "resnet.pth")},
                                      "dinov2": {"weights": str(offline / "dino.safetensors")}},
                            evaluate={"inception_weights": str(offline / "inception.pth")})
        assert preflight.problems(params) == []


def test_too_little_disk_is_named(offline, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda where: Usage(2**40, 2**40 - 2**20, 2**20))
    (problem,) = preflight.problems(params_for(offline))
    assert "GiB of disk" in problem and "encoders.cache_images" in problem


def test_feature_map_shapes_match_the_encoders(offline, tmp_path):
    x = torch.zeros(1, 3, 16, 16)
    params = params_for(tmp_path, encoder="mae")
    assert preflight.feature_map_shapes(params) == [tuple(m.shape[1:]) for m in MAEEncoder(MAEConfig())(x)]
    params = params_for(tmp_path, encoder="pixel")
    assert preflight.feature_map_shapes(params) == [tuple(m.shape[1:]) for m in encoders.PixelEncoder()(x)]
    params = params_for(tmp_path, encoder="resnet18")
    net = encoders.ResNet18Encoder(torchvision.models.resnet18().state_dict())
    assert preflight.feature_map_shapes(params) == [tuple(m.shape[1:]) for m in net(x)]
    params = params_for(tmp_path, encoder="dinov2", encoders={"dinov2": {"resize": 56}})
    with torch.device("meta"):  # ViT-B's real shapes without its 86M weights
        vit = timm.create_model(encoders.DINOV2_MODEL, pretrained=False, img_size=56, num_classes=0)
        maps = encoders.DINOv2Encoder(vit, 56, encoders.DINOV2_BLOCKS)(torch.zeros(1, 3, 16, 16, device="meta"))
    assert preflight.feature_map_shapes(params) == [tuple(m.shape[1:]) for m in maps]


def test_first_stage_stops_with_every_problem(tmp_path):
    """The pipeline's first stage runs the preflight: one paragraph listing all problems, exit 1, no traceback."""
    params = merge(micro_params(), {"encoder": "resnet18", "data": {"dataset": "cifar10", "root": "offline",
                                                                     "download": False},
                                    "encoders": {"resnet18": {"weights": str(tmp_path / "resnet.pth")}},
                                    "evaluate": {"inception_weights": str(tmp_path / "inception.pth")}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "preflight.py"), *stage_args("preflight.py"),
                           "--params", "params.yaml"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in ("3 problem(s)", "cifar-10-batches-py", "resnet.pth", "inception.pth"):
        assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "metrics").exists()


def test_cifar10_names_are_torchvisions():
    """The preflight names CIFAR-10's folder and URL without importing torchvision (4 s); they must stay its own."""
    from driftin import datasets

    tv = torchvision.datasets.CIFAR10
    assert (datasets.CIFAR10_FOLDER, datasets.CIFAR10_FILENAME, datasets.CIFAR10_URL) == (
        tv.base_folder, tv.filename, tv.url)


def test_preflight_does_not_import_torchvision(tmp_path):
    """Its import (~4 s here) was half the preflight's time for a cifar10 run; the check must answer in seconds."""
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                   {"data": {"dataset": "cifar10", "root": str(tmp_path / "raw"), "download": False},
                    "encoder": "resnet18", "encoders": {"resnet18": {"weights": str(tmp_path / "r18.pth")}},
                    "evaluate": {"inception_weights": str(tmp_path / "inception.pth")}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = ("import sys; from driftin import preflight, config; "
            f"p = config.load_params({str(tmp_path / 'params.yaml')!r}); "
            "print(len(preflight.problems(p)), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "False"], out.stdout  # CIFAR-10, ResNet-18, Inception: all missing
