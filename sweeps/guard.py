"""The process between a Ray worker and a stage script, so that a stopped sweep lets every running stage save.

When a Ray worker exits (the driver stopped, Ray shut down, the worker's node left), Ray SIGKILLs the processes the
worker started itself: a stage script started by the worker would die mid-run, without its checkpoint. The worker
(sweeps/task.py) starts this guard instead, and the guard starts the stage. Ray then kills only the guard, and the
kernel sends the stage SIGINT (its parent-death signal, set here), which every stage script answers by saving its
checkpoint and exiting. A stop the worker asks for itself (SIGINT to the job's process group) reaches the stage
directly; the guard ignores it and waits, so the worker still learns how the stage ended: the guard exits with the
stage's code, or dies of the stage's signal.

    python -m sweeps.guard COMMAND...
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import tools

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _stage_hook(guard: int):
    """preexec hook of the stage: the stop signals unblocked and at their defaults (a Ray worker blocks SIGINT and
    this guard ignores both; a child inherits both states), SIGINT when the guard dies."""
    def hook():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        tools.die_with_parent(guard, signal.SIGINT)
    return hook


def main(argv: list[str]) -> int:
    for sig in STOP_SIGNALS:  # meant for the stage, which shares this process group
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked, the stage's signal could not end the guard
    process = subprocess.Popen(argv, preexec_fn=_stage_hook(os.getpid()))
    code = process.wait()
    if code < 0:  # end as the stage ended, so the worker sees the signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
