"""The manifest.json of a task folder: settings, counts, success rates and one record per episode file."""
from __future__ import annotations

import datetime
import json
import pathlib
import re
import sys

import numpy as np

import replay
from tools import EPISODE_KEYS, OBS_KEYS, SUCCESS_RULES, UsageError, atomic_write, success_any, success_final

from .experts import episode_seeds, expert_policy

MANIFEST = "manifest.json"
FILE_PATTERN = re.compile(r"^episode-(\d{6})-(\d+)\.npz$")
# Settings that change the data: a folder collected with other values cannot be extended.
FIXED_SETTINGS = ("env", "obs", "noise", "random_frac", "seed", "time_limit", "action_repeat", "size", "camera",
                  "camera_pos", "render_fast")


def episode_file(index: int, length: int) -> str:
    return f"episode-{index:06d}-{length}.npz"


def episode_record(index: int, path: pathlib.Path, env_seed: int, episode: dict) -> dict:
    """Manifest entry of one episode (both success rules)."""
    success = episode["success"]
    return {"index": index, "file": path.name, "env_seed": env_seed, "length": int(len(success)),
            "return": float(episode["reward"].sum()), "success_any": success_any(success),
            "success_final": success_final(success)}


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
        raise UsageError(f"{path}: unreadable manifest ({err}); move it away to re-collect") from None


def manifest_task(directory: pathlib.Path) -> str | None:
    """The task a folder's manifest records (canonical form), or None without a manifest or task field."""
    from envs.tasks import TaskNameError, canonical_task

    manifest = read_manifest(pathlib.Path(directory)) or {}
    recorded = manifest.get("env") or manifest.get("task")
    if not recorded:
        return None
    try:
        return canonical_task(recorded)
    except TaskNameError:
        return str(recorded)


def check_folder_task(directory: pathlib.Path, task: str, flag: str) -> None:
    """Refuse a folder whose manifest records another task than the one it is listed for (e.g. two folders
    given in swapped order). Folders without a manifest pass: nothing says otherwise."""
    recorded = manifest_task(directory)
    if recorded is not None and recorded != task:
        raise UsageError(f"{flag}: {directory} holds episodes of '{recorded}' (its {MANIFEST}), but it is listed "
                         f"for task '{task}'; list the folders in the order of the tasks")


def write_manifest(directory: pathlib.Path, manifest: dict) -> pathlib.Path:
    """Atomic write (temp file + rename), like the episodes."""
    text = (json.dumps(manifest, indent=2) + "\n").encode()
    return atomic_write(directory / MANIFEST, lambda f: f.write(text))


def check_same_settings(directory: pathlib.Path, old: dict | None, new: dict) -> None:
    """Refuse to mix data collected with different settings in one folder."""
    if old is None:
        return
    diff = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in FIXED_SETTINGS if old.get(k) != new[k]]
    if diff:
        raise UsageError(f"{directory} was collected with other settings ({'; '.join(diff)}); "
                         "use another --out or the same settings")


def build_manifest(settings: dict, records: dict[int, dict]) -> dict:
    """Manifest from per-episode records: counts and success rates under both rules."""
    ordered = [records[i] for i in sorted(records)]
    count = len(ordered)
    return {
        **settings,
        "policy": type(expert_policy(settings["env"])).__name__,
        "episodes": count,
        "steps": int(sum(r["length"] - 1 for r in ordered)),  # policy steps (L - 1 per episode)
        "success_rate_any": float(np.mean([r["success_any"] for r in ordered])) if count else 0.0,
        "success_rate_final": float(np.mean([r["success_final"] for r in ordered])) if count else 0.0,
        "success_rules": {f"success_rate_{k.split('_')[1]}": v for k, v in SUCCESS_RULES.items()},
        "keys": sorted(OBS_KEYS[settings["obs"]] + EPISODE_KEYS),
        "updated": datetime.datetime.now().isoformat(timespec="seconds"),
        "episode_records": ordered,
    }


def known_records(manifest: dict | None, files: dict[int, pathlib.Path], seed: int, env_name: str) -> dict[int, dict]:
    """Records of the episodes already on disk. Every file is loaded and validated, listed or not (a manifest
    does not prove its files intact); its record comes from the manifest when listed with the same length, else
    it is recomputed from the file (a run stopped between saving an episode and writing the manifest).

    A file that does not load is renamed to `<name>.bad` (kept for inspection, one warning line) and removed
    from `files`, so that its episode is collected again."""
    listed = {r["index"]: r for r in (manifest or {}).get("episode_records", [])}
    records = {}
    for index, path in list(files.items()):
        try:
            episode = replay.load_episode(path)
        except replay.EpisodeError as err:
            path.rename(path.with_name(path.name + ".bad"))
            print(f"warning: {err}; moved it to {path.name}.bad and will collect episode {index} again",
                  file=sys.stderr)
            del files[index]
            continue
        known = listed.get(index)
        if known is not None and known["file"] == path.name and known["length"] == replay.episode_length(episode):
            records[index] = known
            continue
        records[index] = episode_record(index, path, episode_seeds(seed, env_name, index)[0], episode)
    return records
