"""Where the episodes come from: source-task folders, the student's folders, the fit/calibration split.

Task ids are positions in the task list (the teacher's `source_tasks`, or the configured subset);
folder names are only used to find a task's folder under a root, never to decide its id.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

import replay
from tools import UsageError, prefill_episode
from envs.tasks import TaskNameError, canonical_task, short_name


class OODInputError(UsageError, ValueError):
    """Input the OOD detector cannot use (missing episodes, wrong observation type, unknown task);
    the message says which input and why, in one line."""


def _canonical(task: str) -> str:
    try:
        return canonical_task(task)
    except TaskNameError:
        return task


def split_list(spec: str | Sequence[str]) -> list[str]:
    """A comma-separated string (as typed on the command line) or a list -> list of non-empty items."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [str(item).strip() for item in items if str(item).strip()]


def select_tasks(teacher_tasks: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Teacher view index of each wanted task (all teacher tasks when `wanted` is empty)."""
    teacher_tasks = [_canonical(t) for t in teacher_tasks]
    if not wanted:
        return list(range(len(teacher_tasks)))
    wanted = [_canonical(t) for t in wanted]
    missing = [t for t in wanted if t not in teacher_tasks]
    if missing:
        raise OODInputError(f"the teacher has no source task {missing}; its tasks are {teacher_tasks}")
    if len(set(wanted)) != len(wanted):
        raise OODInputError(f"source tasks listed twice: {list(wanted)}")
    return [teacher_tasks.index(t) for t in wanted]


def _has_episodes(path: pathlib.Path) -> bool:
    return path.is_dir() and any(path.glob("*.npz"))


def check_folder_task(directory: pathlib.Path, task: str, flag: str) -> None:
    from collection.manifest import check_folder_task as check

    check(directory, task, flag)


def resolve_task_dirs(spec: str | Sequence[str], tasks: Sequence[str], flag: str,
                      fallback: Sequence[str] = ()) -> list[pathlib.Path]:
    """One episode folder per task, in task order.

    `spec` is either a comma list with one folder per task (in task order) or a root holding one
    folder per task named by its short name (`reach` for `metaworld_reach`) or its full name.
    An empty `spec` uses `fallback` (e.g. the config's `source_task_dirs`)."""
    items = split_list(spec) or split_list(fallback)
    if not items:
        raise OODInputError(f"{flag} is empty: give a root with one folder per task or a comma list of folders")
    if len(items) > 1 or (len(tasks) == 1 and _has_episodes(pathlib.Path(items[0]))):
        if len(items) != len(tasks):
            raise OODInputError(f"{flag} lists {len(items)} folders but there are {len(tasks)} tasks {list(tasks)}")
        dirs = [pathlib.Path(item) for item in items]
    else:
        root = pathlib.Path(items[0])
        if not root.is_dir():
            raise OODInputError(f"{flag}: folder not found: {root}")
        dirs = []
        for task in tasks:
            candidates = [root / short_name(task), root / task]
            found = [c for c in candidates if c.is_dir()]
            if not found:
                raise OODInputError(f"{flag}: no folder for task '{task}' under {root} "
                                    f"(looked for {short_name(task)}/ and {task}/)")
            dirs.append(found[0])
    for path, task in zip(dirs, tasks):
        if not path.is_dir():
            raise OODInputError(f"{flag}: folder not found: {path}")
        try:
            check_folder_task(path, _canonical(task), flag)
        except UsageError as err:
            raise OODInputError(str(err)) from None
    return dirs


def episode_files(directory: pathlib.Path, flag: str) -> list[pathlib.Path]:
    """Episode files of one folder in file-name order (= the order they were written)."""
    try:
        files = replay.episode_files(directory)
    except FileNotFoundError:
        raise OODInputError(f"{flag}: folder not found: {directory}") from None
    if not files:
        raise OODInputError(f"{flag}: no episode files (*.npz) in {directory}")
    return files


def student_files(spec: str | Sequence[str], flag: str = "--student_dir", skip_prefill: bool = False,
                  notes: list[str] | None = None) -> list[pathlib.Path]:
    """The student's episodes: every file of each listed folder, folders in the given order, files
    in name order within a folder (the run's episode order).

    `skip_prefill`: leave out each folder's prefill episodes (`prefill_episodes`); one line per folder
    saying how many were left out, or why none could be, is appended to `notes`."""
    dirs = split_list(spec)
    if not dirs:
        raise OODInputError(f"{flag} is empty: give the student's episode folder (<run>/train_eps)")
    files: list[pathlib.Path] = []
    for directory in dirs:
        found = episode_files(pathlib.Path(directory), flag)
        if skip_prefill:
            skip, note = prefill_episodes(pathlib.Path(directory), found)
            if skip == len(found):
                raise OODInputError(f"{flag}: all {len(found)} episodes in {directory} are prefill episodes (random "
                                    f"actions); train the student longer or pass --ood_skip_prefill False")
            found = found[skip:]
            if notes is not None:
                notes.append(note)
        files.extend(found)
    return files


def _env_steps(path: pathlib.Path, action_repeat: int) -> int:
    """Env steps of one episode file, from the length in its name (`...-<L>.npz`) or its contents."""
    stem = path.stem.rsplit("-", 1)
    length = int(stem[1]) if len(stem) == 2 and stem[1].isdigit() else None
    if length is None:
        length = replay.episode_length(replay.load_episode(path))
    return (length - 1) * action_repeat


def prefill_episodes(directory: pathlib.Path, files: Sequence[pathlib.Path]) -> tuple[int, str]:
    """How many of a student run's episode files (name = run order) hold prefill steps (uniform random
    actions), and a line saying so.

    The run's `config.yaml` (next to `train_eps/`) gives `prefill` and `action_repeat` (env steps). An
    episode is left out when it started before `prefill` env steps had been taken: the counts of the
    files before it add up to its start, also with several envs stepping together (their episodes have
    the same length). Without that config nothing is left out."""
    from ruamel.yaml import YAML

    path = directory.parent / "config.yaml"
    try:
        config = YAML(typ="safe", pure=True).load(path.read_text()) if path.is_file() else None
        prefill, repeat = int(config["prefill"]), int(config["action_repeat"])
    except Exception:  # no run config (a plain folder of episodes) or an unreadable one
        return 0, f"{directory}: no readable run config.yaml next to it, so prefill episodes cannot be told apart; all used"
    start, count = 0, 0
    for file in files:
        if not prefill_episode(start, prefill):
            break
        start += _env_steps(file, repeat)
        count += 1
    return count, (f"{directory}: left out {count} of {len(files)} episodes collected during prefill "
                   f"(the first {prefill} env steps, random actions); --ood_skip_prefill False keeps them")


def split_fit_calib(files: Sequence[pathlib.Path], fit_fraction: float, calib_fraction: float,
                    seed: int, task_index: int) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """Disjoint fit and calibration subsets of one task's episode files.

    The permutation is seeded by (seed, task_index) so a task's split does not change when other
    tasks are added; both subsets are returned in file-name order."""
    assert fit_fraction > 0 and calib_fraction > 0 and fit_fraction + calib_fraction <= 1.0 + 1e-9, (
        f"need fit and calibration fractions > 0 summing to at most 1, got {fit_fraction} and {calib_fraction}")
    files = sorted(files)
    n = len(files)
    n_fit = int(round(fit_fraction * n))
    n_calib = min(int(round(calib_fraction * n)), n - n_fit)
    order = np.random.default_rng([int(seed), int(task_index)]).permutation(n)
    fit = sorted(files[i] for i in order[:n_fit])
    calib = sorted(files[i] for i in order[n_fit:n_fit + n_calib])
    return fit, calib
