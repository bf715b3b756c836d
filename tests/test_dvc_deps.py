"""dvc.yaml tells the truth about code: each stage depends on its script and on exactly the src/driftin modules
that script imports, directly or not, so editing any of them makes `dvc status` list the stage. Paths are passed
in each stage's cmd (example-get-started style), never hidden in argparse defaults."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from driftin.closure import import_closure

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "src" / "driftin"


def stages() -> dict[str, dict]:
    """name -> stage definition, a foreach stage's `do` standing for all its items."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in raw.items()}


def script_of(spec: dict) -> Path:
    (rel,) = set(re.findall(r"stages/\w+\.py", spec["cmd"]))
    return REPO / rel


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_its_script_and_import_closure(name):
    spec = stages()[name]
    script = script_of(spec)
    deps = spec["deps"]
    assert script.relative_to(REPO).as_posix() in deps
    declared = {d for d in deps if d.startswith("src/driftin/")}
    # A launcher run as `python -m driftin.<module>` is code the stage runs too.
    launchers = [PACKAGE_DIR / f"{m}.py" for m in re.findall(r"-m driftin\.(\w+)", spec["cmd"])]
    closure = {p.relative_to(REPO).as_posix()
               for path in (script, *launchers) for p in [path, *import_closure(path, PACKAGE_DIR)]
               if p.is_relative_to(PACKAGE_DIR)}
    assert declared == closure, (f"{name}: missing {sorted(closure - declared)}, "
                                 f"not imported {sorted(declared - closure)}")


@pytest.mark.parametrize("script", sorted((REPO / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stage_scripts_have_no_path_defaults(script):
    """Only the shared --params has a default (DVC's own default params file); every path comes from the cmd."""
    calls = [n for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument"]
    assert calls
    defaults = [ast.unparse(c) for c in calls if any(k.arg == "default" for k in c.keywords)
                and ast.literal_eval(c.args[0]) != "--params"]
    assert not defaults, defaults
