"""Static import closures and code digests: every import form a stage or module uses is followed, transitively,
and a change to any module in the closure (only those) changes the digest that keys training checkpoints."""
from pathlib import Path

from driftin.closure import code_digest, import_closure

REPO = Path(__file__).resolve().parents[1]

MODULES = {
    "__init__.py": '"""pkg"""\n',
    "a.py": "from .b import f\n",
    "b.py": "def f():\n    from . import c\n    return c\n",  # an import inside a function counts too
    "c.py": "import driftin.d\n",
    "d.py": "X = 1\n",
    "e.py": "from driftin import d\n",
    "unused.py": "import driftin.a\n",
}


def package(tmp_path: Path) -> Path:
    pkg = tmp_path / "driftin"
    pkg.mkdir()
    for name, text in MODULES.items():
        (pkg / name).write_text(text)
    return pkg


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stage.py"
    path.write_text(text)
    return path


def test_closure_follows_every_import_form_transitively(tmp_path):
    pkg = package(tmp_path)
    names = lambda s: {p.name for p in import_closure(s, pkg)}  # noqa: E731
    assert names(script(tmp_path, "from driftin.a import f\nimport torch\n")) == {
        "__init__.py", "a.py", "b.py", "c.py", "d.py"}
    assert names(script(tmp_path, "from driftin import e\n")) == {"__init__.py", "e.py", "d.py"}
    # A name imported from the package that is not a module adds no module.
    assert names(script(tmp_path, "from driftin.d import X\n")) == {"__init__.py", "d.py"}


def test_code_digest_changes_with_any_module_in_the_closure_only(tmp_path):
    pkg = package(tmp_path)
    stage = script(tmp_path, "from driftin.a import f\n")
    before = code_digest(stage, pkg)
    assert code_digest(stage, pkg) == before
    (pkg / "unused.py").write_text("import driftin.a  # edited\n")
    assert code_digest(stage, pkg) == before
    (pkg / "d.py").write_text("X = 2\n")  # three imports away from the script
    assert code_digest(stage, pkg) != before
    (pkg / "d.py").write_text(MODULES["d.py"])
    assert code_digest(stage, pkg) == before
    stage.write_text("from driftin.a import f  # edited\n")
    assert code_digest(stage, pkg) != before


def test_params_validators_do_not_join_the_closure(tmp_path):
    """config.validate imports every section's owner to check params; those checks produce nothing, so they must
    not make train_ddpm depend on, e.g., the benchmark or the render module (which would retrain on their edits)."""
    stage = REPO / "stages" / "train_ddpm.py"
    names = {p.name for p in import_closure(stage)}
    assert "config.py" in names and "trainer.py" in names
    assert not names & {"benchmark.py", "render.py", "mae.py"}, names  # (fidelity: the quality curve's judge)
    pkg = tmp_path / "driftin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def validate(p):\n    from . import checks\n\ndef run():\n    from . import work\n")
    (pkg / "checks.py").write_text("")
    (pkg / "work.py").write_text("")
    assert [p.name for p in import_closure(pkg / "a.py", pkg)] == ["__init__.py", "work.py"]
