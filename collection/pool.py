"""Collect every task's missing episodes, in-process or over a pool of worker processes."""
from __future__ import annotations

import concurrent.futures as futures
import multiprocessing as mp
import os
import pathlib
import sys

import envs
from tools import OBS_KEYS, RunFailed, die_with_parent, remove_temp_files
import replay

from .experts import episode_seeds, expert_policy, run_episode
from .manifest import (build_manifest, check_same_settings, episode_file, episode_record, existing_episodes,
                       known_records, read_manifest, write_manifest)

_worker_state: dict = {}


def _init_worker(settings: dict, obs: str, noise: float, random_frac: float, seed: int,
                 parent: int | None = None) -> None:
    if parent is not None:
        die_with_parent(parent)
    envs.select_gl_backend(settings["mujoco_gl"], probe=False)
    _worker_state.update(settings=settings, obs=obs, noise=noise, random_frac=random_frac, seed=seed, envs={})


def _collect_one(task: str, index: int, out_dir: str) -> dict:
    """Collect and save episode `index` of `task` (runs in a worker or in-process); returns its record."""
    state = _worker_state
    name = envs.env_name(task)
    if task not in state["envs"]:
        # The expert needs the state even when only pixels are stored.
        env_obs = "state" if state["obs"] == "state" else "both"
        env = envs.make_env(dict(state["settings"], obs=env_obs), task, seed=0)
        state["envs"][task] = (env, expert_policy(name))
    env, policy = state["envs"][task]
    env_seed, noise_seed = episode_seeds(state["seed"], name, index)
    episode = run_episode(env, policy, env_seed, noise_seed, state["noise"], state["random_frac"],
                          OBS_KEYS[state["obs"]])
    path = replay.save_episode(out_dir, episode, filename=episode_file(index, len(episode["reward"])))
    return episode_record(index, path, env_seed, episode)


def _run_job(task: str, index: int, out_dir: str) -> dict:
    try:
        return _collect_one(task, index, out_dir)
    except Exception as err:
        raise RunFailed(f"{task} episode {index} failed: {type(err).__name__}: {err}") from err


def task_settings(task: str, args, settings: dict) -> dict:
    """Everything that determines a task's data, as stored in its manifest."""
    return {"task": task, "env": envs.env_name(task), "obs": args.obs, "noise": float(args.noise),
            "random_frac": float(args.random_frac), "seed": int(args.seed),
            "time_limit": int(settings["time_limit"]), "action_repeat": int(settings["action_repeat"]),
            "size": [int(s) for s in settings["size"]], "camera": settings["camera"],
            "camera_pos": [float(p) for p in settings["camera_pos"]], "render_fast": bool(settings["render_fast"])}


def plan(args, settings: dict) -> dict:
    """task -> (folder, settings, records of the episodes on disk, indices still missing)."""
    plans = {}
    for task in args.tasks:
        directory = pathlib.Path(args.out) / envs.short_name(task)
        meta = task_settings(task, args, settings)
        remove_temp_files(directory)
        manifest = read_manifest(directory)
        check_same_settings(directory, manifest, meta)
        files = existing_episodes(directory)
        records = known_records(manifest, files, args.seed, meta["env"])
        missing = [i for i in range(args.episodes) if i not in files]
        plans[task] = (directory, meta, records, missing)
    return plans


def _run_pool(jobs: list, workers: int, initargs: tuple, plans: dict, bar) -> None:
    context = mp.get_context("spawn")  # fork is unsafe once a GL context exists
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(*initargs, os.getpid())) as pool:
        pending = {pool.submit(_collect_one, task, index, out_dir): (task, index) for task, index, out_dir in jobs}
        try:
            for done in futures.as_completed(pending):
                task, index = pending[done]
                try:
                    plans[task][2][index] = done.result()
                except futures.process.BrokenProcessPool as err:
                    raise RunFailed(f"a collection worker died while running {task} episode {index} "
                                       f"({err}); completed episodes are kept, re-run to resume") from None
                except Exception as err:
                    raise RunFailed(f"{task} episode {index} failed: {type(err).__name__}: {err}") from err
                bar.update(1)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _write_manifests(plans: dict) -> dict:
    """Whatever finished is on disk: record it, even when a later episode failed."""
    manifests = {}
    for task, (directory, meta, records, _) in plans.items():
        if records:
            manifests[task] = build_manifest(meta, records)
            write_manifest(directory, manifests[task])
    return manifests


def collect(args, config) -> dict[str, dict]:
    """Collect every task's missing episodes (in parallel over episodes); returns task -> manifest."""
    from tqdm import tqdm

    settings = envs.env_settings(config)
    plans = plan(args, settings)
    jobs = [(task, i, str(p[0])) for task, p in plans.items() for i in p[3]]
    bar = tqdm(total=len(jobs), desc="episodes", unit="ep", disable=not config.progress or not jobs, file=sys.stderr)
    workers = min(args.workers, max(1, len(jobs)))
    if jobs:
        # Chosen once here (probing EGL, else OSMesa) so that workers start without probing again.
        settings["mujoco_gl"] = envs.select_gl_backend(settings["mujoco_gl"])
    initargs = (settings, args.obs, args.noise, args.random_frac, args.seed)
    try:
        if workers == 1:
            _init_worker(*initargs)
            for task, index, out_dir in jobs:
                plans[task][2][index] = _run_job(task, index, out_dir)
                bar.update(1)
        else:
            _run_pool(jobs, workers, initargs, plans, bar)
    finally:
        bar.close()
        manifests = _write_manifests(plans)
        for env, _ in _worker_state.get("envs", {}).values():
            env.close()
        _worker_state.clear()
    return manifests
