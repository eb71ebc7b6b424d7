"""Task names: the one list of Meta-World v3 tasks, the forms a user may type, and the one form stored.

Every natural spelling is accepted: Meta-World's env name (`drawer-close-v3`), without the version
(`drawer-close`), the folder form (`drawer_close`) and the config form (`metaworld_drawer_close`), in any
letter case. Configs, checkpoints, manifests and logs store only the config form. A name that is none of
these is an error naming the closest task.

The list mirrors metaworld's `ALL_V3_ENVIRONMENTS` (a test keeps them equal) so that names can be checked
without importing metaworld, which imports mujoco and would fix the GL backend too early.
"""
from __future__ import annotations

import difflib
from typing import Iterable

PREFIX = "metaworld_"
VERSION = "-v3"

# Folder forms of Meta-World's 50 v3 tasks.
_SHORT = (
    "assembly", "basketball", "bin_picking", "box_close", "button_press_topdown", "button_press_topdown_wall",
    "button_press", "button_press_wall", "coffee_button", "coffee_pull", "coffee_push", "dial_turn", "disassemble",
    "door_close", "door_lock", "door_open", "door_unlock", "drawer_close", "drawer_open", "faucet_close",
    "faucet_open", "hammer", "hand_insert", "handle_press_side", "handle_press", "handle_pull_side", "handle_pull",
    "lever_pull", "peg_insert_side", "peg_unplug_side", "pick_out_of_hole", "pick_place", "pick_place_wall",
    "plate_slide_back_side", "plate_slide_back", "plate_slide_side", "plate_slide", "push_back", "push",
    "push_wall", "reach", "reach_wall", "shelf_place", "soccer", "stick_pull", "stick_push", "sweep_into", "sweep",
    "window_close", "window_open",
)
TASKS = tuple(sorted(PREFIX + name for name in _SHORT))  # the stored (config) form


class TaskNameError(ValueError):
    """A task name that is no Meta-World v3 task; the message names the closest one."""


def _key(name: str) -> str:
    """The folder form of any accepted spelling (not yet checked against the list)."""
    text = str(name).strip().lower().replace("-", "_")
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    if text.endswith(VERSION.replace("-", "_")):
        text = text[: -len(VERSION)]
    return text


def canonical_task(name: str) -> str:
    """'drawer-close-v3' | 'drawer-close' | 'drawer_close' | 'metaworld_drawer_close' -> 'metaworld_drawer_close'."""
    key = _key(name)
    if key in _SHORT:
        return PREFIX + key
    close = difflib.get_close_matches(key, _SHORT, n=1, cutoff=0.6)
    hint = f"; did you mean '{PREFIX + close[0]}'?" if close else ""
    raise TaskNameError(f"unknown task '{name}'{hint} (Meta-World v3 names such as drawer-close-v3, "
                        f"drawer_close or metaworld_drawer_close; 50 tasks, listed by envs.valid_tasks())")


def canonical_tasks(names: Iterable[str]) -> list[str]:
    """canonical_task of each name; the same task twice (in any spelling) is an error."""
    names = list(names)
    out = [canonical_task(name) for name in names]
    twice = sorted({task for task in out if out.count(task) > 1})
    if twice:
        raise TaskNameError(f"task listed twice: {', '.join(twice)} (in {', '.join(map(str, names))})")
    return out


def valid_tasks() -> list[str]:
    """All stored task names, e.g. 'metaworld_drawer_close'."""
    return list(TASKS)


def env_name(task: str) -> str:
    """Meta-World's env name of any accepted spelling: 'metaworld_coffee_push' -> 'coffee-push-v3'."""
    return _key(canonical_task(task)).replace("_", "-") + VERSION


def short_name(task: str) -> str:
    """The short form of a task: its data folder, sweep axis and report label ('metaworld_drawer_close', in any
    accepted spelling, -> 'drawer_close'). A name that is no Meta-World task (e.g. an old teacher's) only loses
    the prefix."""
    try:
        return _key(canonical_task(task))
    except TaskNameError:
        return str(task).removeprefix(PREFIX)
