"""Atomic, byte-stable file writes: a killed stage never leaves a half-written file that DVC would accept, and the
same content always gives the same bytes, so DVC's hashes change only when results do.

Each writer writes to a temporary file in the target's directory, flushes it to disk, then renames it over the
target (rename is atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix, so writers that infer the format from it (matplotlib, PIL) work.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        raise ValueError(f"refusing to write an empty CSV to {path}")
    fields = list(rows[0].keys())
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def torch_save(path: str | Path, obj: Any) -> None:
    """torch.save through a file object: given a path, torch names the zip's records after the (random temporary)
    file name, so every save would differ."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Byte-stable as it is: np.savez writes each member through ZipFile.open, which stamps zip's fixed epoch
    (1980-01-01), not the time of writing (tests/test_files.py checks it)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed (inputs can be tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
