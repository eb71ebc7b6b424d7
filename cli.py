"""Command-line conventions of every stage script: one usage-error type, one exit code per outcome,
one error line, and SIGTERM handled like Ctrl-C (how clusters and sweeps stop a job)."""
from __future__ import annotations

import errno
import signal
import sys
import threading
from typing import Callable, Sequence

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


def _raise_terminated(signum, frame):
    raise Terminated()


def _quiet_disk_errors(args) -> None:
    """A writer thread (TensorBoard's) that dies of a full disk hands its error to the main thread, which reports
    it in one line; the thread's own traceback would only repeat it."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in _PLAIN_OS_ERRORS:
        return
    threading.__excepthook__(args)


def run_main(prog: str, run: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call `run(argv)` and turn its outcome into an exit code with at most one error line on stderr."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
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
