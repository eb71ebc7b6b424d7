"""Meta-World environments: `make_env` for one env, `VecEnv` for several (docs/architecture.md, "Environment").

MUJOCO_GL must be set before mujoco is first imported; nothing in this package imports mujoco at import time,
`headless_gl` gives it a headless default here, and `make_env` sets it from the config's `mujoco_gl` (EGL,
falling back to OSMesa).
"""
from envs.metaworld import ACTION_DIM, STATE_DIM, MetaWorldEnv, headless_gl, select_gl_backend
from envs.tasks import (
    PREFIX as TASK_PREFIX, TASKS, TaskNameError, canonical_task, canonical_tasks, env_name, short_name, valid_tasks,
)
from envs.parallel import EnvWorkerError, VecEnv
from envs.wrappers import ActionRepeat, Bookkeeping, TimeLimit

headless_gl()

# Config keys the environment reads; their defaults are configs.yaml's `defaults` block (no second copy here).
ENV_KEYS = ("obs", "size", "camera", "camera_pos", "render_fast", "mujoco_gl", "action_repeat", "time_limit")


def env_settings(config) -> dict:
    """The environment part of a config (configs.Config, dict or any object with attributes) as a plain dict."""
    get = config.get if isinstance(config, dict) else lambda key, missing: getattr(config, key, missing)
    missing = object()
    out = {key: get(key, missing) for key in ENV_KEYS}
    absent = [key for key, value in out.items() if value is missing]
    if absent:
        raise ValueError(f"the config lacks the environment keys {', '.join(absent)}: build it with "
                         f"configs.load_config (configs.yaml's defaults block holds every one)")
    return {key: list(value) if isinstance(value, (list, tuple)) else value for key, value in out.items()}


def make_env(config, task: str | None = None, seed: int = 0, index: int = 0):
    """One env with time limit and action repeat; seeded with `seed + index` so env i of a VecEnv
    matches a serial env built with the same seed and index. `task` defaults to `config.task`."""
    settings = env_settings(config)
    if task is None:
        task = config["task"] if isinstance(config, dict) else config.task
    env = MetaWorldEnv(task, obs=settings["obs"], size=settings["size"], camera=settings["camera"],
                       camera_pos=settings["camera_pos"], render_fast=settings["render_fast"],
                       mujoco_gl=settings["mujoco_gl"], seed=int(seed) + int(index))
    env = TimeLimit(env, settings["time_limit"])
    env = ActionRepeat(env, settings["action_repeat"])
    return Bookkeeping(env)


__all__ = [
    "ACTION_DIM", "STATE_DIM", "TASK_PREFIX", "ENV_KEYS", "MetaWorldEnv", "ActionRepeat", "TimeLimit", "Bookkeeping",
    "VecEnv", "EnvWorkerError", "make_env", "env_settings", "env_name", "short_name", "valid_tasks",
    "select_gl_backend", "headless_gl", "TASKS", "TaskNameError", "canonical_task", "canonical_tasks",
]
