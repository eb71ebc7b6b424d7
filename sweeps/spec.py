"""Sweep spec: one YAML file read into a validated `Spec`.

The format is documented in docs/sweeps.md ("Sweep spec"). Every error names the spec file and the key to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
from typing import Any

from tools import UsageError

TOP_KEYS = {"root", "resources", "flags", "collect", "teachers", "students", "ood", "report"}
RESOURCE_KEYS = {"num_cpus", "num_gpus"}
NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SpecError(UsageError):
    """A sweep spec that cannot be used; the message names the file and the key."""


@dataclasses.dataclass
class Method:
    name: str
    flags: dict
    teacher: str | None  # key of `teachers`, or None for a student without teacher
    split: list[str] = dataclasses.field(default_factory=list)  # `teacher: [A, B]`: one teacher per block of seeds

    def teacher_of(self, index: int, count: int) -> str | None:
        """The teacher of the index-th of `count` seeds: `teacher`, or for a list the one whose block of the seeds,
        in order and of equal size (the first half A, the second B), holds it."""
        return self.split[index * len(self.split) // count] if self.split else self.teacher


@dataclasses.dataclass
class Spec:
    path: pathlib.Path
    root: pathlib.Path
    resources: dict            # num_cpus / num_gpus of every job (num_gpus "auto": sweeps.gpu_share)
    flags: dict                # flags of every training stage (pretrain, distill, OOD)
    source_tasks: list[str]
    collect_flags: dict
    teachers: dict[str, dict]  # name -> dreamer_pretrain.py flags
    targets: list[str]
    seeds: list[int]
    student_flags: dict
    methods: list[Method]
    ood: bool
    report_flags: dict


def _mapping(value: Any, where: str, path: pathlib.Path) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}: '{where}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _names(value: Any, where: str, path: pathlib.Path) -> list:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{path}: '{where}' must be a non-empty list")
    return list(value)


def _check_keys(block: dict, allowed: set, where: str, path: pathlib.Path) -> None:
    for key in block:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SpecError(f"{path}: unknown key '{key}' in {where}{hint}")


def _resources(block: dict, where: str, path: pathlib.Path, base: dict) -> dict:
    out = dict(base)
    for key, value in _mapping(block, where, path).items():
        _check_keys({key: 0}, RESOURCE_KEYS, where, path)
        if key == "num_gpus" and value == "auto":  # a share by memory per job kind (sweeps/gpu_share.py)
            out[key] = value
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{path}: '{where}.{key}' must be a number >= 0{' or auto' if key == 'num_gpus' else ''}, "
                            f"got {value!r}")
        out[key] = value
    return out


def _methods(block: dict, teachers: dict, path: pathlib.Path) -> list[Method]:
    methods = []
    for name, entry in _mapping(block, "students.methods", path).items():
        entry = _mapping(entry, f"students.methods.{_folder_name(name, 'students.methods', path)}", path)
        _check_keys(entry, {"flags", "teacher"}, f"students.methods.{name}", path)
        teacher = entry.get("teacher")
        split = list(teacher) if isinstance(teacher, list) else []
        for one in split or [teacher]:
            if one is not None and one not in teachers:
                raise SpecError(f"{path}: students.methods.{name}.teacher '{one}' is not a key of "
                                        f"'teachers' ({', '.join(teachers) or 'none defined'})")
        methods.append(Method(str(name), _mapping(entry.get("flags"), f"students.methods.{name}.flags", path),
                              split[0] if split else teacher, split))
    if not methods:
        raise SpecError(f"{path}: 'students.methods' must name at least one method")
    return methods


def _read(path: pathlib.Path):
    """The spec's YAML; a duplicate key is named with its line (YAML would keep only one of the two)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: sweep spec not found") from None
    except DuplicateKeyError as err:
        key = re.search(r'duplicate key "(.*?)"', err.problem or "")
        raise SpecError(f"{path}:{err.problem_mark.line + 1}: key '{key.group(1) if key else '?'}' is given twice in "
                        f"the mapping that starts on line {err.context_mark.line + 1}; keep one") from None
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or str(err).splitlines()[0]})") \
            from None


def _boolean(value: Any, where: str, path: pathlib.Path) -> bool:
    """YAML's true/false, or a word a flag would accept ('no', 'off', "false", ...): never a string's truth."""
    if isinstance(value, bool):
        return value
    from configs import parse_value

    try:
        return parse_value(str(value), False)
    except ValueError:
        raise SpecError(f"{path}: '{where}' must be true or false, got {value!r}") from None


def _tasks(value: Any, where: str, path: pathlib.Path) -> list[str]:
    """Canonical task names (envs.tasks); a typo, or one task in two spellings, is an error naming it."""
    from envs.tasks import TaskNameError, canonical_task

    names = _names(value, where, path)
    out = []
    for name in names:
        try:
            task = canonical_task(name)
        except TaskNameError as err:
            raise SpecError(f"{path}: '{where}': {err}") from None
        if task in out:
            first = names[out.index(task)]
            raise SpecError(f"{path}: '{where}' lists {task} twice ('{first}' and '{name}'); list each task once")
        out.append(task)
    return out


def _seeds(value: Any, path: pathlib.Path) -> list[int]:
    seeds = _names(value, "students.seeds", path)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: 'students.seeds' must be integers >= 0, got {seeds}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise SpecError(f"{path}: 'students.seeds' lists seed {twice[0]} twice; list each seed once")
    return seeds


def _folder_name(name: Any, where: str, path: pathlib.Path) -> str:
    """A teacher or method name, which names a folder of the sweep's layout."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SpecError(f"{path}: '{where}' name {name!r} must be letters, digits, '_', '.' or '-' (it names a "
                        f"folder)")
    return name


def load(path: str | pathlib.Path, repo_root: pathlib.Path) -> Spec:
    """Read and validate a sweep spec; `root` is taken relative to the repo root unless absolute."""
    path = pathlib.Path(path)
    raw = _mapping(_read(path), "the spec", path)
    _check_keys(raw, TOP_KEYS, "the spec", path)
    if not raw.get("root"):
        raise SpecError(f"{path}: 'root' (the sweep's output folder) is required")
    collect = _mapping(raw.get("collect"), "collect", path)
    _check_keys(collect, {"tasks", "flags"}, "collect", path)
    teachers = _mapping(raw.get("teachers"), "teachers", path)
    for name, entry in teachers.items():
        entry = _mapping(entry, f"teachers.{_folder_name(name, 'teachers', path)}", path)
        _check_keys(entry, {"flags"}, f"teachers.{name}", path)
        teachers[name] = _mapping(entry.get("flags"), f"teachers.{name}.flags", path)
    if teachers and not collect:
        raise SpecError(f"{path}: 'teachers' need source data: add a 'collect' block with its tasks")
    students = _mapping(raw.get("students"), "students", path)
    _check_keys(students, {"targets", "seeds", "flags", "methods"}, "students", path)
    seeds = _seeds(students.get("seeds", [0]), path)
    root = pathlib.Path(str(raw["root"]))
    spec = Spec(
        path=path, root=root if root.is_absolute() else (repo_root / root).resolve(),
        resources=_resources(raw.get("resources"), "resources", path, {"num_cpus": 1, "num_gpus": "auto"}),
        flags=_mapping(raw.get("flags"), "flags", path),
        source_tasks=_tasks(collect.get("tasks"), "collect.tasks", path) if collect else [],
        collect_flags=_mapping(collect.get("flags"), "collect.flags", path),
        teachers=teachers,
        targets=_tasks(students.get("targets"), "students.targets", path),
        seeds=seeds, student_flags=_mapping(students.get("flags"), "students.flags", path),
        methods=_methods(students.get("methods"), teachers, path),
        ood=_boolean(raw.get("ood", False), "ood", path), report_flags=_mapping(raw.get("report"), "report", path))
    from sweeps import flags

    flags.check(spec)  # every flag against the stage that reads it, before any job runs
    return spec
