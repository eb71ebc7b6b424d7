"""Stage 0: source-task datasets from Meta-World's scripted expert policies.

    python collect_data.py --tasks metaworld_reach,metaworld_door_open --episodes 100 --obs pixel \
        --noise 0.1 --random_frac 0.1 --workers 2 --out data --seed 0

Writes one folder per task (named without the `metaworld_` prefix, e.g. data/door_open) holding one `.npz` per
episode (replay.save_episode; keys as in SPEC.md) and a `manifest.json` with the settings and success rates.
Episode i of a task is fully determined by (seed, task, i) and has a fixed file name, so a re-run only adds
the missing episodes and the same seed always gives the same data. Any other config key (--time_limit,
--action_repeat, --size, --render_fast, --configs ...) is read through tools.load_config.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime
import json
import multiprocessing as mp
import os
import pathlib
import re
import sys
import warnings
import zlib

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

import envs  # noqa: E402
from fileio import atomic_write  # noqa: E402
import replay  # noqa: E402
import tools  # noqa: E402

MANIFEST = "manifest.json"
FILE_PATTERN = re.compile(r"^episode-(\d{6})-(\d+)\.npz$")
# Settings that change the data: a folder collected with other values cannot be extended.
FIXED_SETTINGS = ("env", "obs", "noise", "random_frac", "seed", "time_limit", "action_repeat", "size", "camera",
                  "camera_pos", "render_fast")


# --- command line ----------------------------------------------------------------------------------

def parse_args(argv=None) -> tuple[argparse.Namespace, tools.Config]:
    """Collection flags via argparse; every remaining flag goes to tools.load_config (env settings)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags (--configs, --time_limit, --action_repeat, --size, --render_fast, --progress, ...) are config keys.",
        allow_abbrev=False)
    parser.add_argument("--tasks", default="", help="comma-separated metaworld_* names (default: config source_tasks)")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task (existing ones are kept)")
    parser.add_argument("--obs", choices=envs.metaworld.OBS_MODES, default="pixel")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to expert actions")
    parser.add_argument("--random_frac", type=float, default=0.0, help="fraction of steps with uniform random actions")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel episode workers")
    parser.add_argument("--out", default="data", help="root folder; one sub-folder per task")
    parser.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    try:
        config = tools.load_config(rest, description="collect_data.py config keys")
    except tools.ConfigError as err:
        parser.error(str(err))
    if args.episodes < 0:
        parser.error(f"--episodes must be >= 0, got {args.episodes}")
    if args.noise < 0:
        parser.error(f"--noise must be >= 0, got {args.noise}")
    if not 0.0 <= args.random_frac <= 1.0:
        parser.error(f"--random_frac must lie in [0, 1], got {args.random_frac}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or list(config.source_tasks)
    if not tasks:
        parser.error("no tasks: pass --tasks metaworld_a,metaworld_b or a config block with source_tasks")
    for task in tasks:
        try:
            envs.env_name(task)
        except ValueError as err:
            parser.error(str(err))
    args.tasks = tasks
    config.obs, config.seed = args.obs, args.seed
    return args, config


# --- episodes ----------------------------------------------------------------------------------------

def episode_seeds(seed: int, env_name: str, index: int) -> tuple[int, int]:
    """(env seed, action-noise seed) of one episode, derived from (seed, task, index) only.

    crc32 rather than hash(): Python salts str hashes per process.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(env_name.encode()), int(index)]).generate_state(2)
    return int(state[0]), int(state[1])


def obs_keys(obs: str) -> tuple[str, ...]:
    """Observation keys stored for an --obs mode."""
    return {"pixel": ("image",), "state": ("state",), "both": ("image", "state")}[obs]


def episode_file(index: int, length: int) -> str:
    return f"episode-{index:06d}-{length}.npz"


def expert_policy(env_name: str):
    """The scripted expert for an env name, e.g. SawyerDrawerCloseV3Policy for 'drawer-close-v3'."""
    from metaworld.policies import ENV_POLICY_MAP

    if env_name not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted policy for {env_name}")
    return ENV_POLICY_MAP[env_name]()


def run_episode(env, policy, env_seed: int, noise_seed: int, noise: float, random_frac: float,
                keys: tuple[str, ...]) -> dict:
    """Roll out one episode of the expert with action noise; returns the episode dict (SPEC.md keys).

    `env` must observe the state (the expert reads it); `keys` are the observation keys to keep.
    """
    rng = np.random.default_rng(noise_seed)
    step = env.reset(seed=env_seed)
    steps = [step]
    actions = [np.zeros(envs.ACTION_DIM, np.float32)]
    while not step["is_last"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn about their own gains on every call
            expert = np.asarray(policy.get_action(step["state"].astype(np.float64)), dtype=np.float64)
        gaussian = rng.normal(0.0, 1.0, envs.ACTION_DIM)
        uniform = rng.uniform(-1.0, 1.0, envs.ACTION_DIM)
        # Draw every random number every step so that one setting never shifts another's stream.
        action = uniform if rng.random() < random_frac else expert + noise * gaussian
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        step = env.step(action)
        steps.append(step)
        actions.append(action)
    episode = {key: np.stack([s[key] for s in steps]) for key in keys}  # (L, ...)
    episode["action"] = np.stack(actions)  # (L, A), action[0] = 0
    for key in ("reward", "discount", "success"):
        episode[key] = np.array([s[key] for s in steps], dtype=np.float32)  # (L,)
    for key in ("is_first", "is_terminal"):
        episode[key] = np.array([s[key] for s in steps], dtype=bool)  # (L,)
    return episode


def episode_record(index: int, path: pathlib.Path, env_seed: int, episode: dict) -> dict:
    """Manifest entry of one episode (both success rules)."""
    success = episode["success"]
    return {"index": index, "file": path.name, "env_seed": env_seed, "length": int(len(success)),
            "return": float(episode["reward"].sum()), "success_any": bool(success[1:].max(initial=0.0) > 0),
            "success_final": bool(success[-1] > 0)}


# --- workers -------------------------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(settings: dict, obs: str, noise: float, random_frac: float, seed: int) -> None:
    envs.select_gl_backend(settings["mujoco_gl"], probe=False)
    _worker_state.update(settings=settings, obs=obs, noise=noise, random_frac=random_frac, seed=seed, envs={})


def _collect_one(task: str, index: int, out_dir: str) -> dict:
    """Collect and save episode `index` of `task` (runs in a worker or in-process)."""
    state = _worker_state
    name = envs.env_name(task)
    if task not in state["envs"]:
        # The expert needs the state even when only pixels are stored.
        env_obs = "state" if state["obs"] == "state" else "both"
        env = envs.make_env(dict(state["settings"], obs=env_obs), task, seed=0)
        state["envs"][task] = (env, expert_policy(name))
    env, policy = state["envs"][task]
    keys = obs_keys(state["obs"])
    env_seed, noise_seed = episode_seeds(state["seed"], name, index)
    episode = run_episode(env, policy, env_seed, noise_seed, state["noise"], state["random_frac"], keys)
    path = replay.save_episode(out_dir, episode, filename=episode_file(index, len(episode["reward"])))
    return episode_record(index, path, env_seed, episode)


# --- manifest --------------------------------------------------------------------------------------------

def existing_episodes(directory: pathlib.Path) -> dict[int, pathlib.Path]:
    """Episode index -> file for the complete episode files in a task folder."""
    found = {}
    if directory.is_dir():
        for path in directory.iterdir():
            match = FILE_PATTERN.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return found


def read_manifest(directory: pathlib.Path) -> dict | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: {path}: unreadable manifest ({err}); move it away to re-collect") from None


def write_manifest(directory: pathlib.Path, manifest: dict) -> pathlib.Path:
    """Atomic write (temp file + rename), like the episodes."""
    text = (json.dumps(manifest, indent=2) + "\n").encode()
    return atomic_write(directory / MANIFEST, lambda f: f.write(text))


def task_settings(task: str, args: argparse.Namespace, settings: dict) -> dict:
    """Everything that determines a task's data, as stored in its manifest."""
    return {"task": task, "env": envs.env_name(task), "obs": args.obs, "noise": float(args.noise),
            "random_frac": float(args.random_frac), "seed": int(args.seed),
            "time_limit": int(settings["time_limit"]), "action_repeat": int(settings["action_repeat"]),
            "size": [int(s) for s in settings["size"]], "camera": settings["camera"],
            "camera_pos": [float(p) for p in settings["camera_pos"]], "render_fast": bool(settings["render_fast"])}


def check_compatible(directory: pathlib.Path, old: dict | None, new: dict) -> None:
    """Refuse to mix data collected with different settings in one folder."""
    if old is None:
        return
    diff = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in FIXED_SETTINGS if old.get(k) != new[k]]
    if diff:
        raise SystemExit(f"error: {directory} was collected with other settings ({'; '.join(diff)}); "
                         "use another --out or the same settings")


def build_manifest(directory: pathlib.Path, settings: dict, records: dict[int, dict]) -> dict:
    """Manifest from per-episode records: counts and success rates under both rules."""
    from metaworld.policies import ENV_POLICY_MAP

    ordered = [records[i] for i in sorted(records)]
    count = len(ordered)
    return {
        **settings,
        "policy": ENV_POLICY_MAP[settings["env"]].__name__,
        "episodes": count,
        "steps": int(sum(r["length"] - 1 for r in ordered)),  # policy steps (L - 1 per episode)
        "success_rate_any": float(np.mean([r["success_any"] for r in ordered])) if count else 0.0,
        "success_rate_final": float(np.mean([r["success_final"] for r in ordered])) if count else 0.0,
        "success_rules": {"success_rate_any": "info['success'] true at any step",
                          "success_rate_final": "info['success'] true at the last step"},
        "keys": sorted(obs_keys(settings["obs"]) + ("action", "reward", "discount", "success", "is_first",
                                                    "is_terminal")),
        "updated": datetime.datetime.now().isoformat(timespec="seconds"),
        "episode_records": ordered,
    }


def known_records(directory: pathlib.Path, manifest: dict | None, files: dict[int, pathlib.Path],
                  seed: int, env_name: str) -> dict[int, dict]:
    """Records of the episodes already on disk: from the manifest, or recomputed from the file when the
    manifest lacks them (a run stopped between saving an episode and writing the manifest).

    An unlisted file that does not load is renamed to `<name>.bad` (kept for inspection, one warning line)
    and removed from `files`, so that its episode is collected again."""
    listed = {r["index"]: r for r in (manifest or {}).get("episode_records", [])}
    records = {}
    for index, path in list(files.items()):
        if index in listed and listed[index]["file"] == path.name:
            records[index] = listed[index]
            continue
        try:
            episode = replay.load_episode(path)
        except replay.EpisodeError as err:
            path.rename(path.with_name(path.name + ".bad"))
            print(f"warning: {err}; moved it to {path.name}.bad and will collect episode {index} again",
                  file=sys.stderr)
            del files[index]
            continue
        records[index] = episode_record(index, path, episode_seeds(seed, env_name, index)[0], episode)
    return records


# --- driver ------------------------------------------------------------------------------------------------

def collect(args: argparse.Namespace, config) -> dict[str, dict]:
    """Collect every task's missing episodes (in parallel over episodes); returns task -> manifest."""
    settings = envs.env_settings(config)
    root = pathlib.Path(args.out)
    plans = {}
    for task in args.tasks:
        directory = root / envs.task_dir_name(task)
        meta = task_settings(task, args, settings)
        manifest = read_manifest(directory)
        check_compatible(directory, manifest, meta)
        files = existing_episodes(directory)
        records = known_records(directory, manifest, files, args.seed, meta["env"])
        missing = [i for i in range(args.episodes) if i not in files]
        plans[task] = (directory, meta, records, missing)
    jobs = [(task, i, str(plan[0])) for task, plan in plans.items() for i in plan[3]]

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="episodes", unit="ep", disable=not config.progress or not jobs, file=sys.stderr)
    workers = min(args.workers, max(1, len(jobs)))
    if jobs:
        # Chosen once here (probing EGL, else OSMesa) so that workers start without probing again.
        settings["mujoco_gl"] = envs.select_gl_backend(settings["mujoco_gl"])
    try:
        if workers == 1:
            _init_worker(settings, args.obs, args.noise, args.random_frac, args.seed)
            for task, index, out_dir in jobs:
                plans[task][2][index] = _run_job(task, index, out_dir)
                bar.update(1)
        else:
            context = mp.get_context("spawn")  # fork is unsafe once a GL context exists
            with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                             initargs=(settings, args.obs, args.noise, args.random_frac,
                                                       args.seed)) as pool:
                pending = {pool.submit(_collect_one, task, index, out_dir): (task, index)
                           for task, index, out_dir in jobs}
                try:
                    for done in futures.as_completed(pending):
                        task, index = pending[done]
                        try:
                            plans[task][2][index] = done.result()
                        except futures.process.BrokenProcessPool as err:
                            raise RuntimeError(f"a collection worker died while running {task} episode {index} "
                                               f"({err}); completed episodes are kept, re-run to resume") from None
                        except Exception as err:
                            raise RuntimeError(f"{task} episode {index} failed: {type(err).__name__}: {err}") from err
                        bar.update(1)
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
        # Whatever finished is on disk: record it even when a later episode failed.
        manifests = {}
        for task, (directory, meta, records, _) in plans.items():
            if records:
                manifests[task] = build_manifest(directory, meta, records)
                write_manifest(directory, manifests[task])
        for env, _ in _worker_state.get("envs", {}).values():
            env.close()
        _worker_state.clear()
    return manifests


def _run_job(task: str, index: int, out_dir: str) -> dict:
    try:
        return _collect_one(task, index, out_dir)
    except Exception as err:
        raise RuntimeError(f"{task} episode {index} failed: {type(err).__name__}: {err}") from err


def main(argv=None) -> dict[str, dict]:
    """Parse flags, collect, print one summary line per task."""
    args, config = parse_args(argv)
    manifests = collect(args, config)
    for task, manifest in manifests.items():
        print(f"{task}: {manifest['episodes']} episodes, {manifest['steps']} steps, "
              f"success any {manifest['success_rate_any']:.2f} / final {manifest['success_rate_final']:.2f} "
              f"-> {pathlib.Path(args.out) / envs.task_dir_name(task)}")
    return manifests


if __name__ == "__main__":
    main()
