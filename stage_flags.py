"""Which config keys each stage reads, and its `--help`: its own flags only, grouped by the sections of
`configs.yaml`'s `defaults` block, each with the description its comment there gives.

A stage owns whole sections (`# --- name ---` headings; a trailing `*` matches every section starting
with the name) plus a few single keys. A flag of another stage is accepted but warned about, since the
stage ignores it.
"""
from __future__ import annotations

import pathlib
import re
import sys
from typing import Sequence

CONFIG_FILE = pathlib.Path(__file__).resolve().parent / "configs.yaml"

# script -> (sections, single keys from other sections)
STAGES = {
    "collect_data.py": (("environment",), ("progress", "source_tasks")),
    "dreamer_pretrain.py": (("run", "environment", "replay", "world model", "teacher (pretraining)",
                             "behaviour teachers*"), ("threads",)),
    "dreamer_distill.py": (("run", "environment", "replay", "training loop (student)", "world model", "behavior",
                            "distillation (student)", "method:*"), ("source_tasks", "source_task_dirs")),
    "ood_detection.py": (("OOD detection",), ("seed", "device", "progress", "wandb", "wandb_project",
                                              "wandb_mode", "teacher_model_path", "source_tasks",
                                              "source_task_dirs")),
}

# script -> keys of its sections that it never reads (collect_data's own --tasks, --obs, --seed replace them)
NOT_READ = {"collect_data.py": ("task", "obs", "envs", "eval_envs")}

# script -> (the key that sets the run's length, the intervals that scale with it when only it is given)
SCALED = {
    "dreamer_distill.py": ("steps", ("log_every", "eval_every", "checkpoint_every", "video_every")),
    "dreamer_pretrain.py": ("pretrain_iterations", ("log_every", "checkpoint_every")),
}

_SECTION = re.compile(r"^  # --- (.+?) ---\s*$")
_KEY = re.compile(r"^  ([A-Za-z_][A-Za-z0-9_]*):(.*)$")
_MORE = re.compile(r"^\s{4,}#\s?(.*)$")  # a comment continued on the next line, under the first


def describe(path: pathlib.Path) -> dict[str, tuple[str, str]]:
    """key -> (section, description) for every key of the `defaults` block, in file order."""
    out: dict[str, tuple[str, str]] = {}
    section, key, inside = "", None, False
    for line in pathlib.Path(path).read_text().splitlines():
        if not inside:
            inside = line.rstrip() == "defaults:"
            continue
        if line and not line.startswith(" ") and not line.startswith("#"):
            break  # the next block
        if match := _SECTION.match(line):
            section, key = match.group(1).split(" (needs")[0].split(";")[0].strip(), None
        elif match := _KEY.match(line):
            key = match.group(1)
            comment = _comment(match.group(2))
            out[key] = (section, comment)
        elif key and (match := _MORE.match(line)) and out[key][1]:
            out[key] = (section, out[key][1] + " " + match.group(1).strip())
        else:
            key = None
    return out


def _comment(value: str) -> str:
    """The comment after a value (`# ...`), outside quotes."""
    quote = None
    for i, char in enumerate(value):
        if char in "'\"":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (i == 0 or value[i - 1].isspace()):
            return value[i + 1:].strip()
    return ""


def _owns(patterns: Sequence[str], section: str) -> bool:
    return any(section.startswith(p[:-1]) if p.endswith("*") else section == p for p in patterns)


def stage_keys(stage: str, path: pathlib.Path) -> list[str]:
    """The config keys `stage` (a script name) reads, in file order."""
    sections, keys = STAGES[stage]
    skip = NOT_READ.get(stage, ())
    return [k for k, (section, _) in describe(path).items()
            if (_owns(sections, section) or k in keys) and k not in skip]


def owner(key: str, path: pathlib.Path) -> list[str]:
    """The stages that read `key`."""
    return [stage for stage in STAGES if key in stage_keys(stage, path)]


def foreign_flags(stage: str, argv: Sequence[str], path: pathlib.Path) -> list[str]:
    """One warning per flag in `argv` that names a config key `stage` does not read."""
    mine, known = set(stage_keys(stage, path)), describe(path)
    warnings = []
    for token in argv:
        key = token[2:].split("=", 1)[0] if token.startswith("--") else None
        if key and key in known and key not in mine:
            others = ", ".join(owner(key, path)) or "no stage"
            warnings.append(f"warning: --{key} is read by {others}, not by {stage}; it has no effect here")
    return warnings


def help_text(stage: str, description: str, values: dict, path: pathlib.Path, extra: str = "",
              own: tuple[str, dict] = ("", {})) -> str:
    """The stage's --help: usage, description, then its flags grouped by section with their descriptions
    and the values in force (after --configs blocks). `own`: (group title, {flag: (description, default)}) of
    the flags a script parses itself, listed first."""
    sections, _ = STAGES[stage]
    known = describe(path)
    lines = [f"usage: {stage} [--configs BLOCK ...] [--KEY VALUE ...]", "", description.strip(), ""]
    if extra:
        lines += [extra.rstrip(), ""]
    lines += ["  --configs BLOCK ...        config blocks of configs.yaml, merged left to right after 'defaults'"]
    groups: dict[str, list[str]] = {}
    for key, (text, value) in own[1].items():
        groups.setdefault(own[0], []).append(_row(key, text, value))
    for key in stage_keys(stage, path):
        section, text = known[key]
        group = section if _owns(sections, section) else "from other sections"  # listed last
        groups.setdefault(group, []).append(_row(key, text, values.get(key)))
    shared = groups.pop("from other sections", [])
    for group, rows in [*groups.items(), *([("also reads", shared)] if shared else [])]:
        lines += ["", f"{group}:", *rows]
    lines += ["", "Flags of the other stages are accepted but have no effect here (a warning says so)."]
    return "\n".join(lines) + "\n"


def _row(key: str, text: str, value) -> str:
    shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return f"  --{key:<24} {text + ' ' if text else ''}(default: {shown!r})"


def print_help(stage: str, description: str, values: dict, path: pathlib.Path, extra: str = "",
               own: tuple[str, dict] = ("", {})) -> None:
    sys.stdout.write(help_text(stage, description, values, path, extra, own))


def scale_intervals(stage: str, config: dict, block_values: dict, given: set[str]) -> str | None:
    """A run shortened on the command line (e.g. `--steps 5000` where the blocks say 50000) keeps its
    number of log points, evaluations and checkpoints: the interval keys not given on the command line
    shrink by the same factor. Returns the line saying so, or None when nothing changed."""
    if stage not in SCALED:
        return None
    length, intervals = SCALED[stage]
    full, short = block_values.get(length), config.get(length)
    if length not in given or not full or not short or short >= full:
        return None
    changed = []
    for key in intervals:
        value = block_values.get(key)
        if key in given or not value or value <= 0:
            continue
        config[key] = max(1, int(round(value * short / full)))
        changed.append(f"{key} {config[key]}")
    if not changed:
        return None
    return (f"note: --{length} {short} is {short / full:.3g} of the configured {full}: {', '.join(changed)} "
            f"scaled along (give them to override)")
