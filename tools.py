"""Shared utilities of every layer, defined once (docs/architecture.md): the command line's one usage-error type and
exit codes, atomic files, the data contract, checkpoint files, process set-up and the logger.

Heavy libraries (torch, TensorBoard, PIL, W&B) are imported inside the functions that use them, so a process that
only needs an error type or an atomic write (a sweep's Ray worker, the sweep driver) stays light. No config code
lives here: configs.py builds on this module, never the reverse.

Legend: L episode length (policy steps + 1; entry 0 is the reset observation).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import math
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from typing import TYPE_CHECKING, BinaryIO, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch


# --- command line: one usage-error type, one exit code per outcome, one error line; SIGTERM = Ctrl-C ---------------

EXIT_OK = 0
EXIT_FAILED = 1  # the run itself failed (diverged, disk full, ...): one line says why
EXIT_USAGE = 2  # the command line or an input cannot be used as given
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the training loops checkpoint first

# OS errors whose message is enough for the user (the path is in it); others keep their traceback.
_PLAIN_OS_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO)


class UsageError(Exception):
    """Input that cannot be used as given (flag, file, folder, logdir); the message names it and says what to do."""


class RunFailed(RuntimeError):
    """The run itself failed for a reason its message states in one line (e.g. a collection worker died)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that the same save-and-exit path runs."""


class UsageParser(argparse.ArgumentParser):
    """An argparse parser whose errors are UsageErrors (one line through run_main), not a usage block and exit 2."""

    def error(self, message):
        raise UsageError(message)


def _raise_terminated(signum, frame):
    raise Terminated()


def sigterm_as_ctrl_c() -> None:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, so it takes Ctrl-C's save-and-exit path;
    called again by code that lets a library install its own handler (Ray's core aborts on SIGTERM)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def stop_signals_ignored():
    """Ctrl-C and SIGTERM ignored inside (main thread only): the checkpoint a first one made a loop write is not
    aborted half-way by a second (an impatient Ctrl-C, or a sweep stopping a job whose Ray worker then dies too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_signals_deferred():
    """Ctrl-C and SIGTERM held back inside (main thread only) and raised as KeyboardInterrupt on leaving: a record
    and the bookkeeping that says it was written (an evaluation's row and `last_eval`) land together or not at all,
    so a resumed run neither repeats nor loses it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()


def _quiet_disk_errors(args) -> None:
    """A writer thread (TensorBoard's) that dies of a full disk hands its error to the main thread, which reports
    it in one line; the thread's own traceback would only repeat it."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in _PLAIN_OS_ERRORS:
        return
    threading.__excepthook__(args)


def run_main(prog: str, run: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call `run(argv)` and turn its outcome into an exit code with at most one error line on stderr."""
    if threading.current_thread() is threading.main_thread():
        sigterm_as_ctrl_c()
        # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python
        # keeps it so: Ctrl-C of a sweep and the SIGINT a sweep sends its jobs to save would then be lost.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.excepthook = _quiet_disk_errors
    try:
        run(argv)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (RunFailed, FloatingPointError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        if err.errno not in _PLAIN_OS_ERRORS:
            raise
        print(f"{prog}: error: {err.strerror}: {err.filename or ''} (free space or fix permissions, then run the "
              f"same command again)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK

def deprecated(old: str, new: str) -> None:
    """One line on stderr for a renamed command, flag or key that still works: what to use instead."""
    print(f"warning: {old} is deprecated and will be removed; use {new}", file=sys.stderr, flush=True)


# --- atomic files: a reader sees the old file or the complete new one, never a torn file ---------------------------

# Fault injection for the crash tests: "<file name>:<n>" kills this process (SIGKILL) inside the n-th atomic
# write of a file of that name, after its bytes are written and before the rename, as a power cut would.
FAULT_ENV = "COMET_KILL_IN_WRITE"
_writes: dict[str, int] = {}


def code_commit() -> str:
    """The git commit of this checkout, '-dirty' added when tracked files differ from it; 'unknown' outside git.
    Recorded with each run's config (configs.record_config), so a report names the code its runs ran."""
    import subprocess

    root = pathlib.Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


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


def atomic_folder(path: str | os.PathLike, write: Callable[[pathlib.Path], None],
                  own: Sequence[str] | None = None) -> pathlib.Path:
    """Create folder `path` by `write(folder)` into a hidden temp folder beside it, then swap it in whole: a reader
    sees the old folder or the complete new one, never a mix (renameat2's RENAME_EXCHANGE; on a filesystem without
    it, two renames, between which `path` is briefly absent). `path` is replaced as a whole, so an existing one that
    holds a name not in `own` is refused. Temp folders of a killed call are removed by the next one."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmpdir"):
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists():
        foreign = sorted(p.name for p in path.iterdir() if own is not None and p.name not in own) \
            if path.is_dir() else [path.name]
        if foreign:
            raise UsageError(f"{path} holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, which is "
                             f"not written here, and the folder is replaced as a whole: choose a folder of its own")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.tmpdir"
    tmp.mkdir()
    try:
        write(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not _exchange(tmp, path):
            old = tmp.with_name(tmp.name.replace(".tmpdir", ".old.tmpdir"))
            os.rename(path, old)
            os.rename(tmp, path)
            tmp = old
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or filesystem lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE
    except (OSError, AttributeError):
        return False
    if not done and ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    return done


def _fsync_dir(folder: pathlib.Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

# --- the data contract: observation keys, sizes, episode keys, success rules ---------------------------------------

# Observation keys an env emits and a model reads, per `obs` mode.
OBS_KEYS = {"pixel": ("image",), "state": ("state",), "both": ("image", "state")}
OBS_MODES = tuple(OBS_KEYS)
STATE_DIM = 39  # Meta-World's goal-observable observation vector
ACTION_DIM = 4  # Meta-World's end-effector delta (3) + gripper (1)

# Keys every transition (step dict) carries besides the observation, stored per entry of an episode.
STEP_KEYS = ("reward", "discount", "success", "is_first", "is_terminal")
# Keys every episode carries besides the observation: the action that led to each entry, then STEP_KEYS.
EPISODE_KEYS = ("action", *STEP_KEYS)
# Keys a world model trains on besides the observation.
MODEL_KEYS = ("action", "reward", "discount", "is_first")

# Meta-World's rule (success at any step) and the final-step rule, as written into every results file.
SUCCESS_RULES = {"success_any": "any step: info['success'] true at some step of the episode",
                 "success_final": "final step: info['success'] true at the last step of the episode"}


def prefill_episode(start_step: int, prefill: int) -> bool:
    """Whether a student episode that began at env step `start_step` holds prefill steps (uniform random actions).

    Such episodes are training data only: no success or return figure counts them."""
    return start_step < prefill


def success_any(success) -> bool:
    """Whether an episode succeeded at any step. `success` (L,); entry 0 (the reset) is 0 by the env contract."""
    return bool(np.max(np.asarray(success), initial=0.0) > 0)


def success_final(success) -> bool:
    """Whether an episode's last step succeeded. `success` (L,)."""
    success = np.asarray(success)
    return bool(len(success) and success[-1] > 0)

# --- checkpoint files: atomic writes, safe loads (weights_only=True: no pickled code runs) -------------------------

CHECKPOINT_FORMAT = 1


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the reason."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> pathlib.Path:
    """Write `payload` to `path` via a temp file and rename, so an interrupted save never leaves a torn file."""
    import torch

    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except RuntimeError as err:  # torch reports a failed write (e.g. a full disk) as an opaque RuntimeError
        folder = pathlib.Path(path).parent
        full = shutil.disk_usage(folder).free < (1 << 20)
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "no space left on device" if full else f"cannot write ({str(err).splitlines()[0]})",
                      str(path)) from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict with `weights_only=True`; errors name the file."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not a COMET checkpoint (no format_version)")
    if payload["format_version"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: format_version {payload['format_version']} is newer than this code "
                              f"({CHECKPOINT_FORMAT})")
    return payload


def to_builtin(value):
    """Convert numpy scalars/arrays nested in dicts/lists to Python builtins so they pass weights_only loading."""
    import torch

    if isinstance(value, dict):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value

# --- process set-up: seeding, device, threads, workers that die with their parent ----------------------------------

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(name: str):
    """Return a torch.device; asking for CUDA where there is none is an error, not a silent fallback."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda":
        # Every stage feeds the same shapes again and again: let cuDNN time its algorithms once per shape
        # and keep the fastest.
        torch.backends.cudnn.benchmark = True
    return device


def set_threads(threads: int) -> None:
    """Use `threads` torch CPU threads (0 keeps torch's default)."""
    if int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


_NATIVE_BF16: dict = {}


def native_bf16(device) -> bool:
    """Whether `device` has native bf16 arithmetic: a CPU whose oneDNN build runs bf16 natively (AVX-512 BF16
    or AMX), a CUDA GPU that supports it. Elsewhere bf16 is emulated and slower than float32."""
    import torch

    kind = torch.device(device).type
    if kind not in _NATIVE_BF16:
        if kind == "cpu":
            native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        elif kind == "cuda":
            native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            native = False
        _NATIVE_BF16[kind] = bool(native)
    return _NATIVE_BF16[kind]


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `sig` when `parent` dies, even by SIGKILL, wherever the process is (busy,
    blocked, stopped): a killed stage leaves no orphans (SIGINT instead lets a stage script save first). Call it
    first thing in the worker, or in a subprocess's preexec hook."""
    try:
        # The process's own symbols (libc's among them): no library search, which may spawn a process and
        # has no place in a preexec hook.
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when it next finds its parent gone
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

# --- the logger: TensorBoard + metrics.jsonl (+ optional W&B), images and videos -----------------------------------

class Logger:
    """Collects values between `write(step)` calls; one JSON line per write, so `metrics.jsonl` mirrors TensorBoard.

    TensorBoard is opened lazily so that a script that logs nothing leaves no event file.

    `resume_step`: the step a resumed run restarts from. Rows a crashed or interrupted run wrote after its
    last checkpoint are about to be logged again; they are moved to `metrics.superseded.jsonl` (kept, not
    deleted) and TensorBoard purges its events after that step, so each step appears once in both.

    `wandb`: settings of the optional Weights & Biases backend (`wandb_settings(config)`; None: off).

    `layout(charts)` groups tags into one TensorBoard chart each (Custom Scalars tab), e.g. one chart per
    task for the teacher's gate weights instead of one card per task and expert.
    """

    def __init__(self, logdir: str | pathlib.Path, tensorboard: bool = True, resume_step: int | None = None,
                 wandb: dict | None = None):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._use_tb = tensorboard
        self._purge_step = None
        if resume_step is not None:
            self._purge_step = int(resume_step) + 1
            self._set_aside_rows_after(int(resume_step))
        self._writer = None
        self._scalars: dict[str, float] = {}
        self._images: dict[str, np.ndarray] = {}
        self._videos: dict[str, np.ndarray] = {}
        self._last_time = None
        self._last_step = None
        self._wandb = WandbBackend(self.logdir, wandb, resume_step) if wandb else None

    @property
    def writer(self):
        if self._writer is None and self._use_tb:
            from torch.utils.tensorboard import SummaryWriter

            # flush_secs bounds how long closing can wait on the writer's thread: a Ctrl-C that lands inside the
            # writer's queue can lose its wake-up, and the thread then sleeps out the flush interval (120 s default).
            self._writer = SummaryWriter(str(self.logdir), max_queue=1000, purge_step=self._purge_step, flush_secs=10)
        return self._writer

    def _set_aside_rows_after(self, step: int) -> None:
        """Move metrics.jsonl rows with a step after `step` to metrics.superseded.jsonl (atomic rewrite)."""
        path = self.logdir / "metrics.jsonl"
        if not path.is_file():
            return
        keep, later = [], []
        for line in path.read_text().splitlines(keepends=True):
            try:
                row_step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                row_step = None  # a torn last line of a killed run: set aside, not parsed
                later.append(line if line.endswith("\n") else line + "\n")
                continue
            (later if isinstance(row_step, (int, float)) and row_step > step else keep).append(line)
        if not later:
            return
        with open(self.logdir / "metrics.superseded.jsonl", "a") as f:
            f.writelines(later)
        text = "".join(keep).encode()
        atomic_write(path, lambda f: f.write(text))

    def scalar(self, name: str, value) -> None:
        self._scalars[name] = float(value)

    def scalars(self, values: dict, prefix: str = "") -> None:
        for name, value in values.items():
            self.scalar(prefix + name, value)

    def image(self, name: str, value: np.ndarray) -> None:
        """uint8 (H, W, 3)."""
        value = np.asarray(value)
        assert value.ndim == 3 and value.shape[-1] in (1, 3), value.shape
        self._images[name] = value

    def video(self, name: str, value: np.ndarray) -> None:
        """uint8 (T, H, W, 3), or (B, T, H, W, 3) tiled side by side."""
        value = np.asarray(value)
        if value.ndim == 5:
            B, T, H, W, C = value.shape
            value = value.transpose(1, 2, 0, 3, 4).reshape(T, H, B * W, C)
        assert value.ndim == 4 and value.shape[-1] == 3, value.shape
        self._videos[name] = value

    def fps(self, step: int) -> float:
        """Steps per second since the previous call."""
        now = time.time()
        if self._last_time is None:
            self._last_time, self._last_step = now, step
            return 0.0
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def write(self, step: int) -> dict:
        """Flush pending values at `step`; returns the scalars written."""
        scalars = self._scalars
        if scalars:
            record = {"step": int(step), "time": time.time()}
            record.update({k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()})
            with open(self.logdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        writer = self.writer
        if writer is not None:
            with self._naming_disk_errors():
                for name, value in scalars.items():
                    writer.add_scalar(name, value, step)
                for name, value in self._images.items():
                    writer.add_image(name, value, step, dataformats="HWC")
                for name, value in self._videos.items():
                    writer._get_file_writer().add_summary(_gif_summary(name, value), step)
                writer.flush()
        if self._wandb is not None:
            self._wandb.write(step, scalars, self._images, self._videos)
        self._scalars, self._images, self._videos = {}, {}, {}
        return scalars

    def event(self, kind: str, **fields) -> None:
        """Append a non-scalar event (e.g. a pruning decision) to metrics.jsonl, and show it in TensorBoard's
        Text tab (tag `events/<kind>`, at the event's `step` when it has one) and in W&B."""
        record = {"event": kind, "time": time.time(), **fields}
        line = json.dumps(record, default=float)
        with open(self.logdir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        text = ", ".join(f"{k}={v}" for k, v in fields.items())
        step = fields.get("step")
        if self.writer is not None:
            self.writer.add_text(f"events/{kind}", text, int(step) if isinstance(step, (int, float)) else None)
            self.writer.flush()
        if self._wandb is not None:
            self._wandb.event(kind, text)

    def layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        """TensorBoard Custom Scalars layout: {category: {chart title: [tag regex, ...]}}, one chart per title."""
        if self.writer is not None:
            self.writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in group.items()}
                                            for category, group in charts.items()})

    def _naming_disk_errors(self):
        """TensorBoard writes in a thread and re-raises its disk errors (a full disk) without a file name."""
        return naming_errors(f"{self.logdir} (TensorBoard events)")

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with self._naming_disk_errors():
                writer.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


# --- Weights & Biases ------------------------------------------------------------------------------

def wandb_settings(config) -> dict | None:
    """The W&B backend's settings from a config (keys `wandb`, `wandb_project`, `wandb_mode`), None when off."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if not get("wandb", False):
        return None
    mode = str(get("wandb_mode", "online"))
    if mode not in ("online", "offline"):
        

        raise UsageError(f"--wandb_mode must be online | offline, got '{mode}'")
    return {"project": str(get("wandb_project", "comet")), "mode": mode,
            "config": dict(config) if isinstance(config, dict) else None}


class WandbBackend:
    """Mirrors the Logger's values into one W&B run per logdir.

    The run id is kept in `<logdir>/wandb_id`, so a resumed training run continues the same W&B run; W&B's
    own files go to `<logdir>/wandb/` (offline runs are uploaded later with `wandb sync <logdir>/wandb`).
    Videos are passed to W&B as the same GIFs TensorBoard gets (no moviepy needed).
    """

    def __init__(self, logdir: pathlib.Path, settings: dict, resume_step: int | None):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("--wandb True needs the wandb package: pip install -e '.[wandb]' (the pin is in pyproject.toml)") from None
        self._wandb = wandb
        self._logdir = logdir
        id_file = logdir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        (logdir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=settings["project"], mode=settings["mode"], id=run_id, resume="allow",
                              name=logdir.name, dir=str(logdir), config=settings.get("config"), reinit="finish_previous")
        # A resumed run logs again from its checkpoint step; W&B drops steps below its last one.
        self._last_step = -1 if resume_step is None else int(resume_step)

    def write(self, step: int, scalars: dict, images: dict, videos: dict) -> None:
        wandb = self._wandb
        data: dict = {k: v for k, v in scalars.items()}
        data.update({k: wandb.Image(v) for k, v in images.items()})
        paths = []
        for name, frames in videos.items():
            handle, path = tempfile.mkstemp(suffix=".gif", dir=self._logdir / "wandb")
            with os.fdopen(handle, "wb") as f:
                f.write(gif_bytes(frames))
            paths.append(path)
            data[name] = wandb.Video(path, format="gif")
        if data:
            self.run.log(data, step=max(int(step), self._last_step))
            self._last_step = max(int(step), self._last_step)
        for path in paths:  # W&B copied them into its run folder while logging
            os.unlink(path)

    def event(self, kind: str, text: str) -> None:
        self.run.log({f"events/{kind}": self._wandb.Html(f"<pre>{text}</pre>")}, commit=False)

    def close(self) -> None:
        self.run.finish()
        # Stopping W&B's service process flushes the run file now (offline runs are complete on return).
        self._wandb.teardown()


def label_rows(video: np.ndarray, labels: Sequence[str], width: int = 40) -> np.ndarray:
    """Prepend a label column to a video made of `len(labels)` stacked rows (e.g. an open-loop strip of
    truth / model / error): uint8 (..., T, R*H, W, 3) -> (..., T, R*H, width + W, 3)."""
    from PIL import Image, ImageDraw

    video = np.asarray(video)
    rows, height = len(labels), video.shape[-3]
    assert height % rows == 0, f"{height} pixel rows do not split into {rows} labelled rows"
    column = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(column)
    step = height // rows
    for i, label in enumerate(labels):
        draw.text((2, i * step + step // 2 - 5), label, fill=(0, 0, 0))
    column = np.broadcast_to(np.asarray(column), video.shape[:-3] + (height, width, 3))
    return np.concatenate([column, video], axis=-2)


def gif_bytes(frames: np.ndarray, fps: int = 16) -> bytes:
    """An animated GIF of uint8 (T, H, W, 3) frames.

    torch's add_video (and W&B's Video from arrays) need moviepy only to make this GIF; PIL does it directly.
    """
    import io

    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def _gif_summary(name: str, frames: np.ndarray, fps: int = 16):
    """A TensorBoard image summary holding an animated GIF (TensorBoard plays it)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    T, H, W, _ = frames.shape
    image = Summary.Image(height=H, width=W, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=name, image=image)])
