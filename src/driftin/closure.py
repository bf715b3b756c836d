"""A stage script's code: the `driftin` modules it imports, directly or not, found statically, and their digest.

Two things need the same answer to "which code made this result?": `dvc.yaml`, whose deps must list every module a
stage runs (else editing one leaves `dvc status` silent), and the training checkpoints, whose key must change when
that code changes (else a resumed run continues old weights under new code). Both use `import_closure`.

Static (AST) rather than `sys.modules` after import: it needs no torch import, sees imports inside functions, and
gives the same set on every machine and Python version. One kind of import is not code that makes a result: the
owners of each params section that a `validate` function imports to check the params before any work
(`config.validate` dispatches to every section's owner). Counting them made every stage depend on every module, so
editing, say, the benchmark's mode list retrained both generators; a check cannot change an output, it can only
refuse to start.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import driftin

PACKAGE = "driftin"
PACKAGE_DIR = Path(driftin.__file__).resolve().parent


def _module_file(dotted: str, package_dir: Path) -> Path | None:
    """`driftin.x` -> <package_dir>/x.py (or x/__init__.py); None when it is not a module (e.g. a function)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _imported_modules(path: Path, package_dir: Path) -> set[Path]:
    """The package modules one file imports, anywhere in it (top level or inside functions)."""
    inside = path.resolve().is_relative_to(package_dir)
    # Relative imports resolve against the importing module's package.
    here = _module_name(path.resolve(), package_dir).split(".") if inside else []
    if inside and path.name != "__init__.py":
        here = here[:-1]
    found: set[Path] = set()
    for node in _nodes_outside_validators(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import driftin.a.b` runs driftin/__init__, driftin.a and driftin.a.b.
                parts = alias.name.split(".")
                found.update(_module_file(".".join(parts[:i]), package_dir) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if not inside:
                    continue
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            parts = base.split(".")
            found.update(_module_file(".".join(parts[:i]), package_dir) for i in range(1, len(parts) + 1))
            # `from driftin import x` imports the module x when x is one.
            found.update(_module_file(f"{base}.{alias.name}", package_dir) for alias in node.names)
    found.discard(None)
    return found


def _nodes_outside_validators(tree: ast.AST):
    """Every node of `tree` except the bodies of functions named `validate` (params checks; see the docstring)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node)
                    if not (isinstance(child, ast.FunctionDef) and child.name == "validate"))


def import_closure(script: str | Path, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Every `driftin` module `script` runs when imported or executed, transitively, sorted; `script` excluded."""
    script, package_dir = Path(script).resolve(), package_dir.resolve()
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _imported_modules(todo.pop(), package_dir):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    seen.discard(script)
    return sorted(seen)


def code_digest(script: str | Path, package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the bytes of `script` and of every module in its import closure, each with its name, so a
    change to any of them (or a module joining or leaving the closure) gives a different digest."""
    script, package_dir = Path(script).resolve(), package_dir.resolve()
    h = hashlib.sha256()
    for path in [script, *import_closure(script, package_dir)]:
        name = _module_name(path, package_dir) if path.is_relative_to(package_dir) else path.name
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()
