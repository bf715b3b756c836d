"""Loading a project file never runs its pickle: every torch.load in src/ and stages/ passes weights_only=True,
and what the project writes (plain dicts of tensors, lists, numbers, strings) loads that way. The end-to-end test
in test_pipeline.py loads each artefact a real run writes; test_trainer.py loads a checkpoint."""
import ast
from pathlib import Path

import pytest
import torch

from driftin.generators import load_generator, save_generator
from driftin.unet import build_unet

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "src" / "driftin").glob("*.py"), *(REPO / "stages").glob("*.py")])


def torch_loads(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "load"
            and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_torch_load_is_weights_only(path):
    unsafe = [ast.unparse(c) for c in torch_loads(path)
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in c.keywords)]
    assert not unsafe, unsafe


def test_generator_file_loads_weights_only(tmp_path, one_thread):
    model = build_unet("tiny", 16, dropout=0.0)
    save_generator(tmp_path / "g.pt", kind="drift", preset="tiny", image_size=16, unet_overrides={"dropout": 0.0},
                   model=model, ema=model, meta={"params": {"drift": {"temperatures": (0.02, 0.05)}}, "steps": 3})
    record = torch.load(tmp_path / "g.pt", weights_only=True)
    assert record["kind"] == "drift" and record["meta"]["steps"] == 3
    loaded, _ = load_generator(tmp_path / "g.pt", torch.device("cpu"))
    for a, b in zip(loaded.parameters(), model.parameters()):
        assert torch.equal(a, b)
