"""What every stage script shares: argument parsing, and turning expected failures into one clear paragraph."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import ConfigError
from .runtime import DeviceUnavailable, shutdown_distributed
from .trainer import TrainingDiverged, TrainingInterrupted

# Failures a user can fix (bad params, missing files offline, no GPU): a message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DeviceUnavailable, TrainingDiverged, FileNotFoundError)


def parser(description: str, **kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, **kwargs)
    p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    return p


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); expected failures exit 1 with a readable paragraph, Ctrl-C exits 130."""
    try:
        main()
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        # One unwrapped line: the terminal soft-wraps it, so every path, key and command in it stays whole and
        # can be copied (a hard wrap split paths at their hyphens and commands at their spaces).
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown_distributed()
