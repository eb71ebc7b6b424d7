"""One job inside a Ray task: run its command as a subprocess that dies with the worker, write the done marker.

Little is imported here (the standard library and `runtime`), so a Ray worker starts this quickly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque

import tools

TAIL_LINES = 20
TERM_GRACE_S = 60  # a stage script saves its checkpoint on SIGINT (Ctrl-C); give it time before SIGKILL


def _die_with_parent(parent: int):
    """preexec hook: own process group (signals reach the whole stage), SIGINT when the Ray worker dies.

    SIGINT is the signal every stage script answers by saving its checkpoint and exiting.
    """
    def hook():
        os.setpgrp()
        tools.die_with_parent(parent, signal.SIGINT)
    return hook


def _stop(process: subprocess.Popen) -> None:
    """SIGINT the job's process group (the stage saves), SIGKILL it if it does not exit in time."""
    for sig, wait in ((signal.SIGINT, TERM_GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: str, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a log, progress-bar redraws collapsed to their final state."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 64_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return list(deque((line.split("\r")[-1] for line in text.splitlines() if line.strip()), maxlen=lines))


def write_done(path: str, record: dict) -> None:
    """Atomically: a reader sees no marker or a complete one."""
    tools.atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))


def run_job(command: list[str], cwd: str, log: str, done: str, threads: int, retries: int = 2) -> dict:
    """Run `command` until it exits by itself; a run killed by a signal resumes from its logdir (`retries` times).

    Returns exit code, attempts, seconds and the log's last lines. Exit 0 writes the done marker.
    """
    # COMET_SWEEP_JOB tells a job's processes from Ray's own (sweeps.local_ray stops Ray's first).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "COMET_SWEEP_JOB": "1"}
    os.makedirs(os.path.dirname(log), exist_ok=True)
    start, code, attempt = time.time(), None, 0
    for attempt in range(1, retries + 2):
        with open(log, "ab") as f:
            f.write(f"=== attempt {attempt} on {os.uname().nodename}: {subprocess.list2cmdline(command)}\n".encode())
            f.flush()
            process = subprocess.Popen(command, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                       preexec_fn=_die_with_parent(os.getpid()))
            try:
                code = process.wait()
            except BaseException:  # cancelled (driver Ctrl-C) or the worker is shutting down
                _stop(process)
                raise
        if code >= 0:  # exited by itself: finished or failed for a reason a retry would not change
            break
    seconds = time.time() - start
    if code == 0:
        write_done(done, {"command": command, "seconds": seconds, "attempts": attempt, "host": os.uname().nodename})
    return {"code": code, "attempts": attempt, "seconds": seconds, "tail": tail(log)}
