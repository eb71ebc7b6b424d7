"""Sweep spec: one YAML file read into a validated `Spec`.

The format is documented in docs/sweeps.md ("Sweep spec"). Every error names the spec file and the key to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any

from tools import UsageError

TOP_KEYS = {"root", "resources", "flags", "collect", "teachers", "students", "ood", "report"}
RESOURCE_KEYS = {"num_cpus", "num_gpus"}


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
    resources: dict            # default num_cpus / num_gpus of every job
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
        if not isinstance(value, (int, float)) or value < 0:
            raise SpecError(f"{path}: '{where}.{key}' must be a number >= 0, got {value!r}")
        out[key] = value
    return out


def _methods(block: dict, teachers: dict, path: pathlib.Path) -> list[Method]:
    methods = []
    for name, entry in _mapping(block, "students.methods", path).items():
        entry = _mapping(entry, f"students.methods.{name}", path)
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


def load(path: str | pathlib.Path, repo_root: pathlib.Path) -> Spec:
    """Read and validate a sweep spec; `root` is taken relative to the repo root unless absolute."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = pathlib.Path(path)
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: sweep spec not found") from None
    except YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    raw = _mapping(raw, "the spec", path)
    _check_keys(raw, TOP_KEYS, "the spec", path)
    if not raw.get("root"):
        raise SpecError(f"{path}: 'root' (the sweep's output folder) is required")
    collect = _mapping(raw.get("collect"), "collect", path)
    _check_keys(collect, {"tasks", "flags"}, "collect", path)
    teachers = _mapping(raw.get("teachers"), "teachers", path)
    for name, entry in teachers.items():
        entry = _mapping(entry, f"teachers.{name}", path)
        _check_keys(entry, {"flags"}, f"teachers.{name}", path)
        teachers[name] = _mapping(entry.get("flags"), f"teachers.{name}.flags", path)
    if teachers and not collect:
        raise SpecError(f"{path}: 'teachers' need source data: add a 'collect' block with its tasks")
    students = _mapping(raw.get("students"), "students", path)
    _check_keys(students, {"targets", "seeds", "flags", "methods"}, "students", path)
    seeds = _names(students.get("seeds", [0]), "students.seeds", path)
    if not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: 'students.seeds' must be integers >= 0, got {seeds}")
    root = pathlib.Path(str(raw["root"]))
    return Spec(
        path=path, root=root if root.is_absolute() else (repo_root / root).resolve(),
        resources=_resources(raw.get("resources"), "resources", path, {"num_cpus": 1, "num_gpus": 0}),
        flags=_mapping(raw.get("flags"), "flags", path),
        source_tasks=_names(collect["tasks"], "collect.tasks", path) if collect else [],
        collect_flags=_mapping(collect.get("flags"), "collect.flags", path),
        teachers=teachers,
        targets=_names(students.get("targets"), "students.targets", path),
        seeds=seeds, student_flags=_mapping(students.get("flags"), "students.flags", path),
        methods=_methods(students.get("methods"), teachers, path),
        ood=bool(raw.get("ood", False)), report_flags=_mapping(raw.get("report"), "report", path))
