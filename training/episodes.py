"""Episodes from the step dicts of n envs, and their summary statistics.

Legend: n envs, L episode length, A action size.
"""
from __future__ import annotations

import numpy as np

from tools import STEP_KEYS, success_any, success_final

STAT_KEYS = ("return", "length", "success_any", "success_final")


class EpisodeBuilder:
    """Collects step dicts of n envs into episodes (action[t] led to observation t, action[0] = 0)."""

    def __init__(self, n: int, obs_keys, act_dim: int):
        self.obs_keys, self.act_dim = tuple(obs_keys), act_dim
        self.steps = [[] for _ in range(n)]

    def start(self, index: int, obs: dict) -> None:
        """Begin env `index`'s episode with its reset step dict (entries of the stacked arrays at `index`)."""
        self.steps[index] = [self._entry(obs, index, np.zeros(self.act_dim, np.float32))]

    def add(self, index: int, obs: dict, action: np.ndarray) -> None:
        self.steps[index].append(self._entry(obs, index, action))

    def finish(self, index: int) -> dict:
        """The finished episode of env `index` as a dict of arrays (L, ...)."""
        steps, self.steps[index] = self.steps[index], []
        return {k: np.stack([s[k] for s in steps]) for k in steps[0]}

    def _entry(self, obs: dict, index: int, action: np.ndarray) -> dict:
        entry = {k: obs[k][index] for k in (*self.obs_keys, *STEP_KEYS)}
        entry["action"] = np.asarray(action, np.float32)
        return entry


def episode_stats(episode: dict) -> dict:
    """Return, length (policy steps), success at any step and at the final step (floats)."""
    return {"return": float(episode["reward"].sum()), "length": len(episode["reward"]) - 1,
            "success_any": float(success_any(episode["success"])),
            "success_final": float(success_final(episode["success"]))}


def merge_reset(obs: dict, indices: list[int], fresh: dict) -> dict:
    """Stacked step dict `obs` with the rows `indices` replaced by the reset dicts `fresh`."""
    out = {k: v.copy() for k, v in obs.items() if k in fresh}
    for k in out:
        out[k][indices] = fresh[k]
    return out


def ended(obs: dict, index: int) -> bool:
    """Whether env `index`'s episode ended with this step (time limit or terminal state)."""
    return bool(obs["is_last"][index] or obs["is_terminal"][index])
