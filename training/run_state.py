"""The one checkpoint / resume / rollback mechanism of every training loop.

A run's log folder (`--logdir`) holds its checkpoints, `metrics.jsonl`, TensorBoard events and episode
folders. `RunDir` owns the rules for it:

* a new run needs an empty or missing folder unless `--resume True`; a second live run on the same folder
  is refused: the run holds an OS lock (flock) on `.lock` for its whole life, which the kernel drops when the
  process ends however it ends, so a dead run never blocks its folder and a reused PID cannot fake a holder;
* on start, temp files of writes a killed run left behind are removed, and the newest checkpoint (highest
  `step` among the loop's checkpoint names) is loaded and checked against the command's config;
* whatever the previous run wrote after that checkpoint (or everything, if it died before its first one) is
  rolled back: metrics rows move to `metrics.superseded.jsonl` (the Logger does it), episode files to
  `<folder>/superseded/`, so the resumed run logs each step once and replays exactly the checkpoint's data;
* `rng_state` / `set_rng_state` capture and restore every random stream a loop names, so a resumed run
  continues bit-identically.
"""
from __future__ import annotations

import os
import pathlib
import random

import numpy as np

import tools
from tools import Logger, UsageError, remove_temp_files
from replay import episode_files

LOCK = ".lock"
SUPERSEDED = "superseded"


class RunDir:
    """One run's log folder. Constructing it only validates; `open()` takes the lock and loads the checkpoint."""

    def __init__(self, logdir, resume: bool, checkpoints=("latest.pt",), episode_dirs=()):
        if not logdir:
            raise UsageError("--logdir is required (e.g. --logdir runs/reach)")
        self.path = pathlib.Path(logdir).expanduser()
        self.checkpoints, self.episode_dirs = tuple(checkpoints), tuple(episode_dirs)
        existing = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if existing and not resume:
            shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
            raise UsageError(f"--logdir {self.path} is not empty ({shown}) and --resume is False; pass --resume True "
                             f"to continue that run, or choose a new or empty --logdir")
        self.had_content = bool(existing)
        self.checkpoint_path: pathlib.Path | None = None
        self.payload: dict | None = None
        self._lock_fd: int | None = None

    # --- start ----------------------------------------------------------------------------------------

    def open(self, device="cpu") -> dict | None:
        """Lock the folder, remove stale temp files, load the newest checkpoint (None when there is none)."""
        self._check_writable()
        self._lock()
        remove_temp_files(self.path, *(self.path / d for d in self.episode_dirs))
        for name in self.checkpoints:
            path = self.path / name
            if path.is_file():
                payload = tools.load_checkpoint(path, map_location=device)
                if self.payload is None or int(payload["step"]) > int(self.payload["step"]):
                    self.checkpoint_path, self.payload = path, payload
        return self.payload

    @property
    def step(self) -> int:
        """The step the run continues from (0 for a fresh run)."""
        return int(self.payload["step"]) if self.payload is not None else 0

    def check_compatible(self, config, keys, facts: dict | None = None) -> None:
        """Refuse to resume when the command changes a config key in `keys` or a fact (name -> value now)."""
        if self.payload is None:
            return
        from models import config_mismatches

        diffs = config_mismatches(self.payload["config"], config, keys)
        diffs += [f"{k}: checkpoint {self.payload.get(k)!r}, now {v!r}" for k, v in (facts or {}).items()
                  if self.payload.get(k) != v]
        if diffs:
            raise UsageError(f"cannot resume from {self.checkpoint_path}: the command disagrees with the checkpoint's "
                             f"config ({'; '.join(diffs)}); use the original flags or a new --logdir")

    def rollback(self, counts: dict[str, int] | None = None) -> None:
        """Set aside the episodes saved after the checkpoint: `counts` maps each episode folder to the number of
        files the checkpoint saw (those sort first: names start with their creation time). Without a
        checkpoint every episode file of a previous run goes."""
        counts = counts or {}
        for name in self.episode_dirs:
            if self.payload is None:
                set_aside_later_episodes(self.path / name, 0)
            elif name in counts:  # a checkpoint that predates a count leaves its folder as it is
                set_aside_later_episodes(self.path / name, int(counts[name]))

    def logger(self, wandb: dict | None = None) -> Logger:
        """The run's Logger, with rows logged after the checkpoint (or all, before the first one) set aside;
        `wandb`: the optional W&B backend's settings (`logger.wandb_settings(config)`)."""
        if self.payload is not None:
            return Logger(self.path, resume_step=self.step, wandb=wandb)
        return Logger(self.path, resume_step=-1 if self.had_content else None, wandb=wandb)

    # --- during and after -----------------------------------------------------------------------------

    def save(self, name: str, payload: dict) -> pathlib.Path:
        """Write checkpoint `name` atomically."""
        return tools.save_checkpoint(self.path / name, payload)

    def close(self) -> None:
        """Release the lock (only ours)."""
        if self._lock_fd is not None:
            release(self._lock_fd, self.path / LOCK)
            self._lock_fd = None

    # --- lock -----------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--logdir {self.path}: cannot create it ({err.strerror}); choose a writable folder") \
                from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UsageError(f"--logdir {self.path} is not writable; choose a writable folder or fix its permissions")

    def _lock(self) -> None:
        try:
            self._lock_fd = take(self.path / LOCK)
        except Held as held:
            raise UsageError(f"--logdir {self.path} is in use by another run ({held}); wait for it to finish or stop "
                             f"it, or choose another --logdir") from None


# --- the logdir lock: an OS lock held for the run's life ---------------------------------------------------------

class Held(Exception):
    """The lock is held by a live process; the message describes the holder as its file names it."""


def take(path: pathlib.Path) -> int:
    """Lock `path` (created if missing) for this process: flock LOCK_EX on an open file, kept until `release` or the
    process's end. The file then names this process (PID, host), for the message of a run refused because of it.
    Raises Held when a live process holds it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Held(_holder(path)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file a releasing holder unlinked between our open and our lock: ours
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {os.uname().nodename}\n".encode())
            return fd
        os.close(fd)


def release(fd: int, path: pathlib.Path) -> None:
    """Remove the lock file while still holding it (a process that opened it meanwhile sees it unlinked and opens
    anew), then drop the lock."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def holder(logdir) -> str | None:
    """Who holds the lock of `logdir` ('PID 123 on host'), or None when no live process does. A probe: it takes the
    lock for an instant when it is free."""
    path = pathlib.Path(logdir) / LOCK
    if not path.is_file():
        return None
    try:
        release(take(path), path)
    except Held as held:
        return str(held)
    except OSError:  # not ours to open: nothing this probe can say
        return None
    return None


def _holder(path: pathlib.Path) -> str:
    try:
        pid, *host = path.read_text().split()
        return f"PID {int(pid)}" + (f" on {host[0]}" if host else "")
    except (OSError, ValueError):
        return "its process did not name itself yet"


# --- files ------------------------------------------------------------------------------------------------

def set_aside_later_episodes(folder: pathlib.Path, keep: int) -> None:
    """Move the episode files after the first `keep` (in name = creation order) to `folder/superseded/`."""
    if not folder.is_dir():
        return
    later = episode_files(folder)[keep:]
    if not later:
        return
    aside = folder / SUPERSEDED
    aside.mkdir(exist_ok=True)
    for path in later:
        path.rename(aside / path.name)
    print(f"moved {len(later)} episode(s) saved after the checkpoint to {aside}", flush=True)


# --- random streams ---------------------------------------------------------------------------------------

def rng_state(streams: dict) -> dict:
    """Python, NumPy and torch global RNG states (the CUDA generators' too once CUDA is in use: sampling on a
    GPU draws from them) plus each named stream's, in checkpoint-safe types.

    A stream is a numpy Generator, a torch Generator or an object with `rng_state()` / `set_rng_state()`."""
    import torch

    state = {"python": random.getstate(), "numpy": tools.to_builtin(np.random.get_state()),
             "torch": torch.get_rng_state(), "streams": {name: _get(s) for name, s in streams.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]  # one per visible GPU
    return state


def set_rng_state(state: dict, streams: dict) -> None:
    """Restore what `rng_state` captured, into the same named streams. CUDA states are restored on as many
    GPUs as both the checkpoint and this machine have; on a machine without CUDA they are ignored."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy() if hasattr(keys, "numpy") else keys, np.uint32),
                         int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[:torch.cuda.device_count()]])
    for name, stream in streams.items():
        _set(stream, state["streams"][name])


def _get(stream):
    import torch

    if isinstance(stream, np.random.Generator):
        return stream.bit_generator.state
    if isinstance(stream, torch.Generator):
        return stream.get_state()
    return stream.rng_state()


def _set(stream, value) -> None:
    import torch

    if isinstance(stream, np.random.Generator):
        stream.bit_generator.state = value
    elif isinstance(stream, torch.Generator):
        stream.set_state(value.cpu())
    else:
        stream.set_rng_state(value)
