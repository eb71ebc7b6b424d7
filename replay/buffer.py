"""Replay: uniform sampling of fixed-length windows from stored episodes.

Legend: B batch, T window length, L episode length.
Yields dicts of numpy arrays shaped (B, T, ...). Only the sampled windows are copied; episodes are
kept as they were loaded.
"""
from __future__ import annotations

import collections
import os
import pathlib
from typing import Iterable, Mapping

import numpy as np

from tools import UsageError

from .episodes import episode_length, load_dir, validate


class NotEnoughData(UsageError, RuntimeError):
    """No stored episode is long enough for the requested window length."""


class Replay:
    """Episodes in memory, sampled as uniform (B, T) windows over all valid window starts.

    A window never crosses an episode boundary; episodes shorter than T are kept but never sampled.
    `capacity` (env entries, 0 = unlimited) drops the oldest episodes first.
    """

    def __init__(
        self,
        episodes: Mapping[str, dict] | Iterable[dict] | str | os.PathLike | None = None,
        batch: int = 16,
        length: int = 50,
        seed: int = 0,
        capacity: int = 0,
        keys: Iterable[str] | None = None,
    ):
        assert batch > 0 and length > 0, (batch, length)
        self.batch, self.length, self.capacity = batch, length, capacity
        self.keys = list(keys) if keys else None
        self._rng = np.random.default_rng(seed)
        self._episodes: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._steps = 0
        self._starts: np.ndarray | None = None  # cumulative valid window starts, rebuilt lazily
        if episodes is None:
            return
        if isinstance(episodes, (str, os.PathLike)):
            episodes = load_dir(pathlib.Path(episodes), keys=self.keys)
        if isinstance(episodes, Mapping):
            for name, episode in episodes.items():
                self.add(episode, name=name)
        else:
            for episode in episodes:
                self.add(episode)

    # --- content ----------------------------------------------------------------------------------

    def add(self, episode: dict, name: str | None = None) -> None:
        """Add one validated episode (restricted to `keys` when given)."""
        name = name or f"episode-{len(self._episodes):08d}-{self._rng.integers(1 << 30)}"
        episode = validate(episode, name)
        if self.keys:
            episode = {k: episode[k] for k in self.keys}
        if name in self._episodes:
            self._steps -= episode_length(self._episodes.pop(name))
        self._episodes[name] = episode
        self._steps += episode_length(episode)
        while self.capacity and self._steps > self.capacity and len(self._episodes) > 1:
            _, old = self._episodes.popitem(last=False)
            self._steps -= episode_length(old)
        self._starts = None

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_steps(self) -> int:
        return self._steps

    def __len__(self) -> int:
        return self._steps

    # --- sampling ---------------------------------------------------------------------------------

    def _index(self) -> tuple[list[dict], np.ndarray]:
        if self._starts is None:
            self._list = list(self._episodes.values())
            counts = np.array([max(episode_length(ep) - self.length + 1, 0) for ep in self._list], np.int64)
            self._starts = np.cumsum(counts)
        return self._list, self._starts

    def can_sample(self) -> bool:
        """Whether at least one window of length T exists."""
        _, starts = self._index()
        return len(starts) > 0 and starts[-1] > 0

    def sample(self, batch: int | None = None, rng: np.random.Generator | None = None,
               out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One batch of windows, (B, T, ...) per key, uniform over all valid window starts.

        `batch` (default: the configured B) and `rng` (default: the replay's own generator) let a caller
        draw a few windows, e.g. for a video, without copying a full batch or moving the training stream.
        `out`: arrays (B, T, ...) per key to assemble the batch in (e.g. page-locked memory), returned."""
        episodes, starts = self._index()
        total = int(starts[-1]) if len(starts) else 0
        if total == 0:
            longest = max((episode_length(ep) for ep in episodes), default=0)
            raise NotEnoughData(
                f"no episode is long enough for batch_length {self.length}: {len(episodes)} episodes, "
                f"longest has {longest} entries; lower --batch_length or collect longer episodes")
        flat = (self._rng if rng is None else rng).integers(0, total, size=self.batch if batch is None else batch)
        which = np.searchsorted(starts, flat, side="right")  # (B,)
        offset = flat - np.concatenate([[0], starts])[which]  # (B,)
        keys = episodes[which[0]].keys()
        windows = lambda key: [episodes[e][key][o:o + self.length] for e, o in zip(which, offset)]
        if out is None:
            return {key: np.stack(windows(key)) for key in keys}
        for key in keys:
            np.stack(windows(key), out=out[key])
        return out

    def dataset(self):
        """Endless iterator of batches."""
        while True:
            yield self.sample()

    # --- state for resume -------------------------------------------------------------------------

    def rng_state(self) -> dict:
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state
