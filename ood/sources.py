"""Where the episodes come from: source-task folders, the student's folders, the fit/calibration split.

Task ids are positions in the task list (the teacher's `source_tasks`, or the configured subset);
folder names are only used to find a task's folder under a root, never to decide its id.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

import replay
from cli import UsageError
from envs.metaworld import TASK_PREFIX


class OODInputError(UsageError, ValueError):
    """Input the OOD detector cannot use (missing episodes, wrong observation type, unknown task);
    the message says which input and why, in one line."""


def short_name(task: str) -> str:
    """Folder name of a task under a data root: `metaworld_drawer_close` -> `drawer_close`."""
    return task[len(TASK_PREFIX):] if task.startswith(TASK_PREFIX) else task


def split_list(spec: str | Sequence[str]) -> list[str]:
    """A comma-separated string (as typed on the command line) or a list -> list of non-empty items."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [str(item).strip() for item in items if str(item).strip()]


def select_tasks(teacher_tasks: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Teacher view index of each wanted task (all teacher tasks when `wanted` is empty)."""
    teacher_tasks = list(teacher_tasks)
    if not wanted:
        return list(range(len(teacher_tasks)))
    missing = [t for t in wanted if t not in teacher_tasks]
    if missing:
        raise OODInputError(f"the teacher has no source task {missing}; its tasks are {teacher_tasks}")
    if len(set(wanted)) != len(wanted):
        raise OODInputError(f"source tasks listed twice: {list(wanted)}")
    return [teacher_tasks.index(t) for t in wanted]


def _has_episodes(path: pathlib.Path) -> bool:
    return path.is_dir() and any(path.glob("*.npz"))


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
    for path in dirs:
        if not path.is_dir():
            raise OODInputError(f"{flag}: folder not found: {path}")
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


def student_files(spec: str | Sequence[str], flag: str = "--student_dir") -> list[pathlib.Path]:
    """The student's episodes: every file of each listed folder, folders in the given order, files
    in name order within a folder (the run's episode order)."""
    dirs = split_list(spec)
    if not dirs:
        raise OODInputError(f"{flag} is empty: give the student's episode folder (<run>/train_eps)")
    files: list[pathlib.Path] = []
    for directory in dirs:
        files.extend(episode_files(pathlib.Path(directory), flag))
    return files


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
