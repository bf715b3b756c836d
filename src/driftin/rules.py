"""How a params.yaml value is rejected: ConfigError and the three checks every section's validator uses.

Each module that owns a choice (datasets, unet presets, encoders, benchmark modes, ...) exports it and validates
its own params section with these; `config` only loads, types and hands each section to its owner. This module
imports nothing from the package, so every owner can use it without an import cycle.
"""
from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A params.yaml value is missing, misspelt or impossible; the message names the key."""


def require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: '{key}' {msg}")


def choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"params.yaml: '{key}' is '{value}', which is not one of: {', '.join(choices)}.{hint}")


def positive(value: float, key: str) -> None:
    require(value > 0, key, f"must be positive, got {value}")
