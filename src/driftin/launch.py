"""Launch a training stage on N processes: params and N are checked first, and a failing child's own paragraph is
the last thing printed.

    python -m driftin.launch --nproc-per-node N --key ddpm.nproc_per_node -- stages/train_ddpm.py [stage args]

dvc.yaml interpolates N from params.yaml into the command, so a bad value (`two`, 0) used to reach torchrun raw,
and torchrun follows a child's one-paragraph error with its ~30-line ChildFailedError traceback. Here the params
file (the stage's `--params`) is validated and N checked against it, naming the key, before anything starts.
N = 1 runs the script in this process (no second interpreter start-up); N > 1 runs torchrun's launcher
(`--standalone`) in this process. Either way the exit code is the stage's, and Ctrl-C reaches the stage, which
writes a checkpoint and exits 130: under torchrun the workers run in their own sessions and the launcher forwards
the signal to them once.
"""
from __future__ import annotations

import argparse
import logging
import runpy
import sys
from functools import reduce

from . import cli
from .config import ConfigError, Params, load_params


def _nproc(value: str, key: str, params: Params) -> int:
    """N as given on the command line: a positive integer, equal to the params value it was interpolated from
    (the params checks, e.g. that N divides the batch, were made against that value)."""
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"params.yaml: '{key}' must be a positive integer (processes per node), got {value!r}")
    try:
        expected = reduce(getattr, key.split("."), params)
    except AttributeError:
        raise ConfigError(f"--key {key}: params.yaml has no such key; pass the key N comes from, "
                          "e.g. ddpm.nproc_per_node") from None
    if int(value) != expected:
        raise ConfigError(f"--nproc-per-node {value} differs from params.yaml '{key}' ({expected}); "
                          f"launch with --nproc-per-node {expected}, or change {key}")
    return int(value)


def _torchrun(n: int, script: str, args: list[str]) -> int:
    """torchrun --standalone --nproc-per-node n script args, in this process; returns the stage's exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # The launcher's own log lines (the OMP_NUM_THREADS banner, "failed (exitcode: 1) local_rank: ...") would bury
    # the child's message; the workers are separate processes, so their output is untouched.
    logging.disable(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(["--standalone", f"--nproc-per-node={n}", script, *args]))
    except ChildFailedError as e:
        # The first rank to fail is the cause; the others were stopped because of it. A negative code is a signal.
        code = e.get_first_failure()[1].exitcode
        return code if code >= 0 else 128 - code
    except SignalException as e:  # Ctrl-C / SIGTERM: the workers got it too, checkpointed and stopped
        return 128 + int(e.sigval)
    return 0


def main() -> None:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", required=True, help="processes on this machine, as a positive integer")
    p.add_argument("--key", required=True, help="the params key N comes from, named in errors")
    args = p.parse_args(argv[:cut])
    stage = argv[cut + 1:]
    if not stage:
        p.error("give the stage script and its arguments after '--'")
    script, stage_args = stage[0], stage[1:]
    # The stage's own --params option and default; its -h stays the stage's.
    params_path = cli.parser("", add_help=False).parse_known_args(stage_args)[0].params
    n = _nproc(args.nproc_per_node, args.key, load_params(params_path))
    if n > 1:
        sys.exit(_torchrun(n, script, stage_args))
    sys.argv = [script, *stage_args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    cli.run(main)
