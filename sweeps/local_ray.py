"""The life of a sweep's own local Ray: started for one driver, gone when that driver ends, however it ends.

A local Ray is a tree of processes (GCS, raylet, dashboard, log monitor, the raylet's agents, workers and the
stage scripts they run). Ctrl-C or a normal exit shuts it down; after `kill -9` of the driver some of them
outlive it (docs/benchmarks.md, "Sweeps on Ray"). Every process of the tree inherits one environment variable
naming the sweep root and this driver's session, and the session is recorded in `<root>/.ray_local.json`,
so the next run of the same sweep finds the processes of a dead driver by that mark and stops them, and
touches nothing else (another sweep's Ray, a Ray cluster).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import time
import uuid

import tools
from tools import UsageError

MARK = "COMET_SWEEP_SESSION"
JOB_MARK = "COMET_SWEEP_JOB"  # set by sweeps.task in the environment of the stage scripts it starts
RECORD = ".ray_local.json"
STOP_GRACE_S = 60  # a stage script saves its checkpoint on SIGINT; give it time before SIGKILL


def marked(session: str) -> dict[int, bool]:
    """The processes (other than this one) whose environment carries `session`'s mark: pid -> whether it runs a
    job (a stage script, or a process it started), which `sweeps.task` marks as such."""
    needle, job = f"{MARK}={session}".encode(), f"{JOB_MARK}=1".encode()
    found = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ:
            found[int(proc.name)] = job in environ
    return found


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state first); empty when there is no such process."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _started(pid: int) -> str:
    """The process's start time (clock ticks since boot): with the PID it names one process, never a reused PID."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def _signal_and_wait(pids: list[int], sig: int | None, wait_s: float) -> list[int]:
    """Send `sig` (None: none) to `pids`, wait up to `wait_s` for them to exit; the ones still alive."""
    for pid in pids if sig is not None else ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    end = time.time() + wait_s
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def stop(processes: dict[int, bool], grace_s: float = STOP_GRACE_S) -> None:
    """Stop Ray's processes (SIGTERM, then SIGKILL), then let the jobs finish saving (their Ray worker's death
    sent them SIGINT) before SIGKILL. Jobs get no second signal while they save their checkpoint."""
    ray_side = [p for p, job in processes.items() if not job]
    left = _signal_and_wait(ray_side, signal.SIGTERM, 10)
    _signal_and_wait(left, signal.SIGKILL, 5)
    jobs = _signal_and_wait([p for p, job in processes.items() if job], None, grace_s)
    _signal_and_wait(jobs, signal.SIGKILL, 5)


def clean_up(root: pathlib.Path) -> dict[int, bool]:
    """Stop what the last local Ray of the sweep at `root` left behind; refuse if its driver still runs."""
    path = root / RECORD
    try:
        record = json.loads(path.read_text())
        session, driver, started = record["session"], int(record["driver"]), record["driver_started"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if _alive(driver) and _started(driver) == started:
        raise UsageError(f"{root}: this sweep is already running (driver pid {driver}); stop it first, or wait")
    leftovers = marked(session)
    if leftovers:
        print(f"[sweep] stopping {len(leftovers)} process(es) left by the previous run's local Ray "
              f"(driver pid {driver})", flush=True)
        stop(leftovers)
    path.unlink(missing_ok=True)
    return leftovers


@contextlib.contextmanager
def session(root: pathlib.Path):
    """Mark every process of the local Ray started inside this block; stop them all when it ends."""
    clean_up(root)
    name = uuid.uuid4().hex
    root.mkdir(parents=True, exist_ok=True)
    record = json.dumps({"session": name, "driver": os.getpid(), "driver_started": _started(os.getpid())}).encode()
    tools.atomic_write(root / RECORD, lambda f: f.write(record))
    previous = os.environ.get(MARK)
    os.environ[MARK] = name  # inherited by the Ray processes ray.init starts, and by everything they start
    try:
        yield name
    finally:
        import ray

        ray.shutdown()
        if previous is None:
            os.environ.pop(MARK, None)
        else:
            os.environ[MARK] = previous
        stop(marked(name))  # what ray.shutdown leaves (the raylet's agents exit on their own, eventually)
        (root / RECORD).unlink(missing_ok=True)
