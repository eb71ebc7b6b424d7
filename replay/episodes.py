"""The episode file contract (docs/usage.md, "Data format"; docs/architecture.md): one compressed `.npz` per episode, written atomically.

Legend: L episode length (policy steps + 1; entry 0 is the reset observation), A action size.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import logging
import uuid
import zipfile
import zlib
from typing import Iterable

import numpy as np

from tools import ACTION_DIM, EPISODE_KEYS, OBS_KEYS, UsageError, atomic_write

# key -> (dtype, trailing shape or None when any trailing shape is allowed)
SCHEMA = {
    "image": (np.uint8, None),
    "state": (np.float32, None),
    "action": (np.float32, None),
    "reward": (np.float32, ()),
    "discount": (np.float32, ()),
    "success": (np.float32, ()),
    "is_first": (np.bool_, ()),
    "is_terminal": (np.bool_, ()),
}
log = logging.getLogger("comet")


class EpisodeError(UsageError, ValueError):
    """An episode file or dict that breaks the contract; the message names the file and the reason."""


def validate(episode: dict, name: str = "episode") -> dict:
    """The one check of the episode contract, used by every reader and writer: keys, lengths, shapes, dtypes,
    action width, finite values, is_first[0]. Returns the episode with arrays cast to the contract dtypes;
    raises EpisodeError naming `name` and the first problem found."""
    missing = [k for k in EPISODE_KEYS if k not in episode]
    if missing:
        raise EpisodeError(f"{name}: missing keys {missing}")
    if not any(k in episode for k in OBS_KEYS["both"]):
        raise EpisodeError(f"{name}: no observation key (need 'image' and/or 'state')")
    if np.ndim(episode["reward"]) != 1:
        raise EpisodeError(f"{name}: 'reward' has shape {np.shape(episode['reward'])}, expected (L,)")
    length = len(episode["reward"])
    if length < 1:
        raise EpisodeError(f"{name}: empty episode")
    out = {key: _checked(name, key, np.asarray(value), length) for key, value in episode.items()}
    if not out["is_first"][0]:
        raise EpisodeError(f"{name}: is_first[0] must be True")
    return out


def _checked(name: str, key: str, value: np.ndarray, length: int) -> np.ndarray:
    """One array of an episode, checked against SCHEMA and cast to its dtype (unknown keys pass unchanged)."""
    if key not in SCHEMA:
        return value
    dtype, trailing = SCHEMA[key]
    if value.ndim == 0 or len(value) != length:
        raise EpisodeError(f"{name}: '{key}' has length {value.shape[:1]}, expected {length}")
    if trailing is not None and value.shape[1:] != trailing:
        raise EpisodeError(f"{name}: '{key}' has shape {value.shape}, expected ({length},)")
    if key == "image" and (value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8):
        raise EpisodeError(f"{name}: 'image' is {value.dtype} {value.shape}, expected uint8 (L, H, W, 3)")
    if key in ("state", "action") and value.ndim != 2:
        raise EpisodeError(f"{name}: '{key}' has shape {value.shape}, expected (L, dim)")
    if key == "action" and value.shape[1] != ACTION_DIM:
        raise EpisodeError(f"{name}: 'action' has width {value.shape[1]}, expected {ACTION_DIM}")
    if value.dtype.kind not in "biuf":
        raise EpisodeError(f"{name}: '{key}' has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise EpisodeError(f"{name}: '{key}' holds NaN or inf")
    return value.astype(dtype, copy=False)


def episode_length(episode: dict) -> int:
    """Number of entries L (policy steps + 1)."""
    return len(episode["reward"])


def episode_name(index: int | None = None, length: int = 0) -> str:
    """A sortable file name: time stamp, then index (or a random id), then length."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    ident = f"{index:06d}" if index is not None else uuid.uuid4().hex[:8]
    return f"{stamp}-{ident}-{length}.npz"


def save_episode(directory: str | os.PathLike, episode: dict, filename: str | None = None) -> pathlib.Path:
    """Validate and write one episode atomically (temp file + rename): a crash never leaves a partial file
    under the final name."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    episode = validate(episode, filename or "episode")
    filename = filename or episode_name(length=episode_length(episode))
    return atomic_write(directory / filename, lambda f: np.savez_compressed(f, **episode))


def load_episode(path: str | os.PathLike) -> dict:
    """Load and validate one episode (`allow_pickle=False`); raise EpisodeError naming the file and reason."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        reason = str(err).split(".")[0] if str(err) else type(err).__name__
        raise EpisodeError(f"{path}: unreadable ({reason})") from None
    return validate(episode, str(path))


def episode_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """Episode files in a folder, in name (= creation) order; temp files are ignored."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"episode folder not found: {directory}")
    return sorted(p for p in directory.glob("*.npz") if not p.name.startswith("."))


def load_dir(directory: str | os.PathLike, keys: Iterable[str] | None = None,
             skipped: list[str] | None = None) -> dict[str, dict]:
    """Load every valid episode in a folder; bad files are skipped with one warning line each (naming the file
    and the reason), and so are files whose observation shapes differ from the folder's first good episode.

    `keys`: if given, episodes lacking any of them are skipped too (e.g. state episodes for a pixel model).
    `skipped`: if given, the "file: reason" of each skipped file goes there instead of a warning, so that a
    caller for which no usable episode is an error can say so in one line (and warn otherwise: `warn_skipped`).
    """
    keys = list(keys or [])
    episodes, shapes = {}, None
    for path in episode_files(directory):
        try:
            episode = load_episode(path)
            absent = [k for k in keys if k not in episode]
            if absent:
                raise EpisodeError(f"{path}: lacks keys {absent}")
            found = {k: episode[k].shape[1:] for k in OBS_KEYS["both"] if k in episode}
            if shapes is not None and found != shapes:
                raise EpisodeError(f"{path}: observation shapes {found} differ from the folder's {shapes}")
        except EpisodeError as err:
            if skipped is None:
                log.warning("skipping episode %s", err)
            else:
                skipped.append(str(err))
            continue
        shapes = found if shapes is None else shapes
        episodes[str(path)] = episode
    return episodes


def warn_skipped(skipped: Iterable[str]) -> None:
    """One warning line per "file: reason" that `load_dir(..., skipped=...)` collected."""
    for reason in skipped:
        log.warning("skipping episode %s", reason)
