"""The sweep's one progress display: a status line (done / running / failed / waiting, ETA) and job events, the
events also in the sweep's own log (<root>/sweep.log)."""
from __future__ import annotations

import pathlib
import sys
import time

STATES = ("done", "running", "failed", "waiting", "blocked")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Prints events as lines and the status line on a terminal in place, elsewhere every `every` seconds."""

    def __init__(self, total: int, stream=None, every: float = 30.0, log: pathlib.Path | None = None):
        self.total, self.stream, self.every = total, stream or sys.stdout, every
        self.live = self.stream.isatty()
        self.start, self.last_line, self.last_status = time.time(), 0.0, ""
        self.durations: list[float] = []
        self.log = log  # every event is also appended there, with its time

    def event(self, text: str, prefix: str = "[sweep] ") -> None:
        self.stream.write(("\r\033[K" if self.live else "") + f"{prefix}{text}\n")
        self.stream.flush()
        self.last_status = ""
        if self.log is not None:
            try:
                with open(self.log, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            except OSError:
                pass  # the console has it; a full disk shows up in the jobs' own errors

    def eta(self, remaining: int, running: int) -> str:
        if not self.durations or not remaining:
            return "?" if remaining else "0m00s"
        per_job = sum(self.durations) / len(self.durations)
        return _duration(per_job * remaining / max(running, 1))

    def status(self, counts: dict, force: bool = False) -> None:
        remaining = counts["running"] + counts["waiting"]
        line = (f"[sweep {_duration(time.time() - self.start)}] done {counts['done']}/{self.total} · running "
                f"{counts['running']} · waiting {counts['waiting']} · failed {counts['failed']}"
                + (f" · blocked {counts['blocked']}" if counts["blocked"] else "")
                + f" · ETA {self.eta(remaining, counts['running'])}")
        if self.live:
            self.stream.write("\r\033[K" + line)
        elif force or (line.split("] ", 1)[1] != self.last_status.split("] ", 1)[-1]
                       and time.time() - self.last_line >= self.every):
            self.stream.write(line + "\n")
            self.last_line = time.time()
        else:
            return
        self.last_status = line
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
