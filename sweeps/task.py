"""One job inside a Ray task: run its command (behind sweeps/guard.py) until it exits by itself, write the done marker.

Little is imported here (the standard library, `tools`, the logdir lock), so a Ray worker starts this quickly.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import time
from collections import deque

import tools

TAIL_LINES = 20
TERM_GRACE_S = 60  # a stage script saves its checkpoint on SIGINT (Ctrl-C); give it time before SIGKILL
HEADER = re.compile(r"^=== attempt (\d+) of \d+ on (.+?) at [0-9: -]+ \(task ([0-9a-f]+)\): ", re.M)


def _guard_hook(worker: int):
    """preexec hook of the guard: its own process group (a stop reaches guard and stage alike), death with the Ray
    worker (which Ray also brings about: it kills a worker's children), the stop signals unblocked."""
    def hook():
        os.setpgrp()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        tools.die_with_parent(worker, signal.SIGKILL)
    return hook


def _wait(process: subprocess.Popen) -> int:
    """process.wait() in short slices: a cancelled Ray task gets its KeyboardInterrupt only between Python calls."""
    while True:
        try:
            return process.wait(1.0)
        except subprocess.TimeoutExpired:
            continue


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


def last_attempt(log: str, token: str) -> tuple[int, str] | None:
    """(number, node) of the last attempt the task submitted as `token` began, from the headers of the job's log;
    None when it began none."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 256_000))
            found = [m for m in HEADER.findall(f.read().decode(errors="replace")) if m[2] == token]
    except OSError:
        return None
    return (int(found[-1][0]), found[-1][1]) if found else None


def node_name() -> str:
    """This Ray node as the sweep's log and summary name it: 'node 1a2b3c4d (host)'."""
    import ray

    return f"node {ray.get_runtime_context().get_node_id()[:8]} ({os.uname().nodename})"



def outcome(code: int) -> str:
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _wait_unlocked(logdir: str, log) -> None:
    """A previous attempt's stage may still be saving (its worker or driver gone, the stage not yet): let it finish
    before this attempt opens the same logdir, rather than have it refused."""
    from training.run_state import holder

    end, said = time.time() + TERM_GRACE_S + 30, False
    while (who := holder(logdir)) is not None and time.time() < end:
        if not said:
            log.write(f"=== waiting for {who} to release {logdir} (a previous attempt saving)\n".encode())
            log.flush()
            said = True
        time.sleep(1.0)


def run_job(command: list[str], cwd: str, log: str, done: str, logdir: str, threads: int, first: int = 1,
            last: int = 3, earlier: tuple = (), token: str = "0") -> dict:
    """Run `command` until it exits by itself; a run killed by a signal resumes from its logdir, as attempts `first`
    to `last` of the job. Returns the exit code, the attempts made ({attempt, node, outcome} each), seconds and the
    log's last lines. Exit 0 writes the done marker, with the `earlier` attempts (lost with their worker or node)
    before this call's. `token` (hex) marks this call's attempt headers in the log, so the driver can tell which
    attempt a lost task had reached."""
    # COMET_SWEEP_JOB tells a job's processes from Ray's own (sweeps.local_ray stops Ray's first).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "COMET_SWEEP_JOB": "1"}
    os.makedirs(os.path.dirname(log), exist_ok=True)
    start, code, node, attempts = time.time(), None, node_name(), []
    for attempt in range(first, last + 1):
        with open(log, "ab") as f:
            _wait_unlocked(logdir, f)
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"=== attempt {attempt} of {last} on {node} at {stamp} (task {token}): "
                    f"{subprocess.list2cmdline(command)}\n".encode())
            f.flush()
            process = subprocess.Popen([command[0], "-m", "sweeps.guard", *command], cwd=cwd, stdout=f,
                                       stderr=subprocess.STDOUT, env=env, preexec_fn=_guard_hook(os.getpid()))
            try:
                code = _wait(process)
            except BaseException:  # cancelled (the driver stops) or the worker is shutting down
                _stop(process)
                raise
        attempts.append({"attempt": attempt, "node": node, "outcome": outcome(code)})
        if code >= 0:  # exited by itself: finished or failed for a reason a retry would not change
            break
    seconds = time.time() - start
    if code == 0:
        record = json.dumps({"command": command, "seconds": seconds, "attempts": attempts[-1]["attempt"],
                             "history": [*earlier, *attempts], "host": os.uname().nodename}, indent=1).encode()
        tools.atomic_write(done, lambda f: f.write(record))
    return {"code": code, "attempts": attempts, "seconds": seconds, "tail": tail(log)}
