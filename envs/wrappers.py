"""Step-dict wrappers: time limit (env steps), action repeat and episode bookkeeping.

They wrap anything with `reset(seed=None) -> step dict` and `step(action, observe=True) -> step dict`
(docs/architecture.md, "Environment") and forward every other attribute to the wrapped env.
Order used by `envs.make_env`: Bookkeeping(ActionRepeat(TimeLimit(MetaWorldEnv))), so the limit counts
single physics steps and may cut the last repeat short.
"""
from __future__ import annotations

import numpy as np


class Wrapper:
    """Forwards attributes and the step-dict API to the wrapped env."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        if name == "env":  # not yet set (e.g. during unpickling); avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seed: int | None = None) -> dict:
        return self.env.reset(seed=seed)

    def step(self, action, observe: bool = True) -> dict:
        return self.env.step(action, observe=observe)

    def close(self) -> None:
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TimeLimit(Wrapper):
    """Marks `is_last` after `limit` env steps (0: no limit); stepping past it is an error, not a silent reset."""

    def __init__(self, env, limit: int):
        super().__init__(env)
        if int(limit) < 0:
            raise ValueError(f"time_limit must be >= 0 env steps, got {limit}")
        self.limit = int(limit)
        self.elapsed = 0
        self._started = False
        self._done = True

    def reset(self, seed: int | None = None) -> dict:
        self.elapsed = 0
        self._started = True
        self._done = False
        return self.env.reset(seed=seed)

    def step(self, action, observe: bool = True) -> dict:
        if not self._started:
            raise RuntimeError(f"{self.env.name}: call reset() before step()")
        if self._done:
            raise RuntimeError(f"{self.env.name}: episode is over (time limit {self.limit} env steps); call reset()")
        last = self.limit > 0 and self.elapsed + 1 >= self.limit
        # The caller must see the final observation, whatever it asked for.
        step = self.env.step(action, observe=observe or last)
        self.elapsed += 1  # only after the step went through: a rejected action costs no time
        if last:
            step["is_last"] = True
        self._done = bool(step["is_last"] or step["is_terminal"])
        return step


class ActionRepeat(Wrapper):
    """Applies each action `repeat` times: reward = sum over the repeats, success = any within them.

    Only the final repeat builds an observation (rendering is the expensive part of a pixel step).
    """

    def __init__(self, env, repeat: int):
        super().__init__(env)
        if int(repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def step(self, action, observe: bool = True) -> dict:
        total, success = 0.0, 0.0
        for i in range(self.repeat):
            step = self.env.step(action, observe=observe and i == self.repeat - 1)
            total += float(step["reward"])
            success = max(success, float(step["success"]))
            if step["is_last"] or step["is_terminal"]:
                break
        step["reward"] = np.float32(total)
        step["success"] = np.float32(success)
        return step


class Bookkeeping(Wrapper):
    """Checks the step-dict contract and keeps running episode statistics in `.stats`.

    `.stats`: return, length (policy steps), success_any, success_final of the current/last episode.
    """

    def __init__(self, env):
        super().__init__(env)
        self._obs_keys = tuple(env.obs_space)
        self.stats = self._fresh()

    @staticmethod
    def _fresh() -> dict:
        return {"return": 0.0, "length": 0, "success_any": 0.0, "success_final": 0.0}

    def reset(self, seed: int | None = None) -> dict:
        step = self._check(self.env.reset(seed=seed))
        self.stats = self._fresh()
        return step

    def step(self, action, observe: bool = True) -> dict:
        step = self._check(self.env.step(action, observe=observe), observe)
        stats = self.stats
        stats["return"] += float(step["reward"])
        stats["length"] += 1
        stats["success_any"] = max(stats["success_any"], float(step["success"]))
        stats["success_final"] = float(step["success"])
        return step

    def _check(self, step: dict, observe: bool = True) -> dict:
        step["reward"] = np.float32(step["reward"])
        step["success"] = np.float32(step["success"])
        step["is_first"] = bool(step["is_first"])
        step["is_last"] = bool(step["is_last"])
        step["is_terminal"] = bool(step["is_terminal"])
        step["discount"] = np.float32(1.0 - float(step["is_terminal"]))
        if observe or step["is_last"]:
            missing = [k for k in self._obs_keys if k not in step]
            assert not missing, f"{self.env.name}: step dict lacks observation keys {missing}"
        return step
