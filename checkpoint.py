"""Checkpoint files: atomic writes and safe loads (`weights_only=True`, so no pickled code runs)."""
from __future__ import annotations

import errno
import os
import pathlib
import shutil

import torch

from cli import UsageError
from fileio import atomic_write

FORMAT_VERSION = 1


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file and the reason."""


def save(path: str | os.PathLike, payload: dict) -> pathlib.Path:
    """Write `payload` to `path` via a temp file and rename, so an interrupted save never leaves a torn file."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except RuntimeError as err:  # torch reports a failed write (e.g. a full disk) as an opaque RuntimeError
        folder = pathlib.Path(path).parent
        full = shutil.disk_usage(folder).free < (1 << 20)
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "no space left on device" if full else f"cannot write ({str(err).splitlines()[0]})",
                      str(path)) from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict with `weights_only=True`; errors name the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not a COMET checkpoint (no format_version)")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {payload['format_version']} is newer than this code "
                              f"({FORMAT_VERSION})")
    return payload


def to_builtin(value):
    """Convert numpy scalars/arrays nested in dicts/lists to Python builtins so they pass weights_only loading."""
    import numpy as np

    if isinstance(value, dict):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value
