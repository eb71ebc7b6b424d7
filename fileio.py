"""Atomic file writes: a reader sees the old file or the complete new one, never a torn file."""
from __future__ import annotations

import os
import pathlib
import uuid
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> pathlib.Path:
    """Create `path` by `write(file)` into a hidden temp file beside it, fsync, then rename over `path`.

    The temp name is unique per call (two writers never share one) and starts with a dot, so episode
    listings skip it; it is removed if `write` fails.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
