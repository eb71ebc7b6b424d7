"""Atomic file writes: a reader sees the old file or the complete new one, never a torn file; disk errors
that name the file they were writing."""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import uuid
from typing import BinaryIO, Callable

# Fault injection for the crash tests: "<file name>:<n>" kills this process (SIGKILL) inside the n-th atomic
# write of a file of that name, after its bytes are written and before the rename, as a power cut would.
FAULT_ENV = "COMET_KILL_IN_WRITE"
_writes: dict[str, int] = {}


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> pathlib.Path:
    """Create `path` by `write(file)` into a hidden temp file beside it, fsync, then rename over `path`.

    The temp name is unique per call (two writers never share one) and starts with a dot, so episode
    listings skip it; it is removed if `write` fails (a killed process leaves it: the training loops
    remove such files when they start).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        with naming_errors(path):  # a failed write() names no file
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                _maybe_fault(path.name)
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextlib.contextmanager
def naming_errors(name):
    """An OSError raised inside that names no file (a failed write(), a writer thread's full disk) is raised
    again naming `name`, so its one-line report says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(name)) from None


def remove_temp_files(*folders: pathlib.Path) -> None:
    """Delete the temp files of atomic writes that a killed process left in `folders` (run it only while no
    other process writes there: the training loops hold their logdir's lock)."""
    for folder in folders:
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def _maybe_fault(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":")
    if target == name:
        _writes[name] = _writes.get(name, 0) + 1
        if _writes[name] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
