"""The teacher's data: the K source-task datasets and task-balanced batches drawn from them.

Legend: B batch, T sequence length, K source tasks.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np

import replay
from tools import MODEL_KEYS, OBS_KEYS, UsageError


def model_keys(obs: str) -> list[str]:
    """Episode keys a world model with observation mode `obs` trains on."""
    return [*OBS_KEYS[obs], *MODEL_KEYS]


def _check_task_lists(tasks: list, dirs: list) -> None:
    if not tasks:
        raise UsageError("no source tasks: set source_tasks (and source_task_dirs), e.g. "
                         "--configs defaults metaworld metaworld_teacher_moe_pretrain")
    if len(dirs) != len(tasks):
        raise UsageError(f"source_task_dirs has {len(dirs)} folders but source_tasks has {len(tasks)} tasks; "
                         f"give one folder per task, in the same order (task id = position in source_tasks)")
    if len(set(tasks)) != len(tasks):
        raise UsageError(f"source_tasks lists a task twice: {tasks}")


def load_task_episodes(task: str, directory, config) -> dict:
    """Every usable episode of one source task's folder (UsageError when there is none)."""
    from collection.manifest import check_folder_task

    needed = model_keys(config.obs)
    path = pathlib.Path(directory)
    check_folder_task(path, task, "--source_task_dirs")
    try:
        files = replay.episode_files(path)
    except FileNotFoundError:
        raise UsageError(f"source folder for task '{task}' not found: {path}") from None
    if not files:
        raise UsageError(f"source folder for task '{task}' holds no episode files (*.npz): {path}; "
                         f"collect them with collect_data.py")
    skipped: list[str] = []
    episodes = replay.load_dir(path, keys=needed, skipped=skipped)
    if not episodes:
        raise UsageError(f"no usable episode for task '{task}' in {path}: all {len(files)} files were skipped "
                         f"(e.g. {skipped[0]}; obs '{config.obs}' needs keys {needed})")
    replay.warn_skipped(skipped)
    return episodes


def load_sources(config) -> tuple[list[dict], int, dict]:
    """Episodes of every source task (list index = task id), the action size and the obs shapes."""
    tasks, dirs = list(config.source_tasks), list(config.source_task_dirs)
    _check_task_lists(tasks, dirs)
    sources, act_dims, shapes = [], {}, {}
    for task, directory in zip(tasks, dirs):
        episodes = load_task_episodes(task, directory, config)
        first = next(iter(episodes.values()))
        act_dims[task] = first["action"].shape[-1]
        for key in OBS_KEYS[config.obs]:
            shapes.setdefault(key, {})[task] = tuple(first[key].shape[1:])
        sources.append(episodes)
    if len(set(act_dims.values())) != 1:
        raise UsageError(f"source tasks disagree on the action size: {act_dims}")
    obs_shapes = {}
    for key, per_task in shapes.items():
        if len(set(per_task.values())) != 1:
            raise UsageError(f"source tasks disagree on the '{key}' shape: {per_task}")
        obs_shapes[key] = next(iter(per_task.values()))
    if "image" in obs_shapes and obs_shapes["image"][:2] != tuple(config.size):
        raise UsageError(f"episode images are {obs_shapes['image']} but config size is {list(config.size)}")
    return sources, next(iter(act_dims.values())), obs_shapes


class TaskBatcher:
    """Task-balanced (B, T) batches with per-sequence task ids.

    mixed: every batch holds floor(B/K) sequences of each task, and the B mod K remaining slots
    rotate over the tasks from one update to the next. round_robin: update i uses task i mod K only.
    """

    def __init__(self, sources: list[dict], batch: int, length: int, seed: int, mode: str, keys: list[str]):
        if mode not in ("mixed", "round_robin"):
            raise UsageError(f"task_batching must be mixed | round_robin, got '{mode}'")
        self.k, self.batch, self.mode = len(sources), batch, mode
        per_task = batch if mode == "round_robin" else math.ceil(batch / self.k)
        self.replays = []
        for task, episodes in enumerate(sources):
            task_seed = int(np.random.SeedSequence([seed, task]).generate_state(1)[0])
            buffer = replay.Replay(episodes, per_task, length, task_seed, keys=keys)
            if not buffer.can_sample():
                longest = max(replay.episode_length(e) for e in episodes.values())
                raise UsageError(f"task {task}: no episode is long enough for batch_length {length} "
                                 f"(longest has {longest} entries); lower --batch_length")
            self.replays.append(buffer)

    def counts(self, step: int) -> list[int]:
        """Sequences per task in update `step`."""
        if self.mode == "round_robin":
            return [self.batch if k == step % self.k else 0 for k in range(self.k)]
        base, extra = divmod(self.batch, self.k)
        counts = [base] * self.k
        for j in range(extra):
            counts[(step * extra + j) % self.k] += 1
        return counts

    def sample(self, step: int) -> dict:
        """One batch of numpy arrays (B, T, ...) plus 'task' (B,) int64."""
        parts, ids = [], []
        for task, n in enumerate(self.counts(step)):
            if n:
                chunk = self.replays[task].sample()
                parts.append({k: v[:n] for k, v in chunk.items()})
                ids.append(np.full(n, task, np.int64))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batch["task"] = np.concatenate(ids)
        return batch

    def rng_state(self) -> list[dict]:
        return [r.rng_state() for r in self.replays]

    def set_rng_state(self, states: list[dict]) -> None:
        for r, s in zip(self.replays, states):
            r.set_rng_state(s)
