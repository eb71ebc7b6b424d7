"""Meta-World environments: `make_env` for one env, `VecEnv` for several (docs/architecture.md, "Environment").

MUJOCO_GL must be set before mujoco is first imported; nothing in this package imports mujoco at import time,
and `make_env` sets it from the config's `mujoco_gl` (EGL, falling back to OSMesa).
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldEnv, select_gl_backend  # noqa: E402
from envs.tasks import (  # noqa: E402
    PREFIX as TASK_PREFIX, TASKS, TaskNameError, canonical_task, canonical_tasks, env_name, task_dir_name, valid_tasks,
)
from envs.parallel import EnvWorkerError, VecEnv  # noqa: E402
from envs.wrappers import ActionRepeat, Bookkeeping, TimeLimit  # noqa: E402

# Config keys the environment reads, with the defaults used when a key is absent.
ENV_KEYS = {
    "obs": "pixel",
    "size": [64, 64],
    "camera": "corner2",
    "camera_pos": [0.75, 0.075, 0.7],
    "render_fast": True,
    "mujoco_gl": "egl",
    "action_repeat": 2,
    "time_limit": 300,
}


def env_settings(config) -> dict:
    """The environment part of a config (configs.Config, dict or any object with attributes) as a plain dict."""
    out = {}
    for key, default in ENV_KEYS.items():
        if isinstance(config, dict):
            value = config.get(key, default)
        else:
            value = getattr(config, key, default)
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def make_env(config, task: str | None = None, seed: int = 0, index: int = 0):
    """One env with time limit and action repeat; seeded with `seed + index` so env i of a VecEnv
    matches a serial env built with the same seed and index. `task` defaults to `config.task`."""
    settings = env_settings(config)
    if task is None:
        task = config["task"] if isinstance(config, dict) else config.task
    env = MetaWorldEnv(task, obs=settings["obs"], size=settings["size"], camera=settings["camera"],
                       camera_pos=settings["camera_pos"], render_fast=settings["render_fast"],
                       seed=int(seed) + int(index), mujoco_gl=settings["mujoco_gl"])
    env = TimeLimit(env, settings["time_limit"])
    env = ActionRepeat(env, settings["action_repeat"])
    return Bookkeeping(env)


__all__ = [
    "ACTION_DIM", "STATE_DIM", "TASK_PREFIX", "ENV_KEYS", "MetaWorldEnv", "ActionRepeat", "TimeLimit", "Bookkeeping",
    "VecEnv", "EnvWorkerError", "make_env", "env_settings", "env_name", "task_dir_name", "valid_tasks",
    "select_gl_backend", "TASKS", "TaskNameError", "canonical_task", "canonical_tasks",
]
