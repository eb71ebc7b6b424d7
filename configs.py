"""Config loading: `configs.yaml` blocks merged left to right, typed `--key value` flags, schedules.

Every stage script calls `load_config(argv)`; nothing else parses the config flags.
"""
from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys
from typing import Any, Callable, Sequence

import tools
from tools import UsageError, atomic_write, deprecated

ROOT = pathlib.Path(__file__).resolve().parent
CONFIG_FILE = ROOT / "configs.yaml"
# Renamed flags, old -> new: the old name keeps working with one deprecation line.
RENAMED = {
    "pretrain": "prefill_updates",  # the reference implementation's name for the updates right after prefill
}


class ConfigError(UsageError, ValueError):
    """A config block, key or value that cannot be used; the message says which and why."""


class Config(dict):
    """A plain dict with attribute access; nested dicts stay dicts."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(_unknown_message("config key", name, self.keys())) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return dict(self)


def _unknown_message(kind: str, name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint}"


def read_blocks(path: pathlib.Path = CONFIG_FILE) -> dict:
    """Read all config blocks from the YAML file."""
    from ruamel.yaml import YAML

    with open(path) as f:
        blocks = YAML(typ="safe", pure=True).load(f)
    if not isinstance(blocks, dict):
        raise ConfigError(f"{path}: expected a mapping of config blocks")
    return blocks


def merge(base: dict, update: dict) -> dict:
    """Recursive merge: dicts merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected True or False, got '{text}'")


def _parse_number(text: str, kind: type) -> int | float:
    # int('1e5') fails although 1e5 is a natural way to write a step count; accept it when integral.
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got '{text}'") from None
    if kind is int:
        if not value.is_integer():
            raise ValueError(f"expected an integer, got '{text}'")
        return int(value)
    return value


def parse_value(text: str, default: Any) -> Any:
    """Parse a command-line string into the type of `default`."""
    if isinstance(default, bool):
        return _parse_bool(text)
    if isinstance(default, int):
        return _parse_number(text, int)
    if isinstance(default, float):
        return _parse_number(text, float)
    if isinstance(default, (list, tuple)):
        items = [t.strip() for t in text.split(",") if t.strip()] if text.strip() else []
        if default:
            return [parse_value(t, default[0]) for t in items]
        return [_guess(t) for t in items]
    if default is None:
        return _guess(text)
    return text


def _guess(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def renamed_flags(argv: Sequence[str]) -> list[str]:
    """`argv` with each renamed flag (`--old v` or `--old=v`) under its new name; one deprecation line each."""
    out = []
    for token in argv:
        key, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if key in RENAMED:
            deprecated(f"--{key}", f"--{RENAMED[key]}")
            token = f"--{RENAMED[key]}{eq}{value}"
        out.append(token)
    return out


def load_config(argv: Sequence[str] | None = None, description: str = "", path: pathlib.Path = CONFIG_FILE,
                extra_flags: Sequence[str] = (), stage: str | None = None, own_help: tuple = ("", {})) -> Config:
    """Merge `--configs` blocks and apply typed `--key value` overrides.

    Unknown blocks and unknown keys are errors naming the closest valid one (among the config keys and
    `extra_flags`, the flags a script parses itself). With `stage` (a script name of `STAGES`),
    `--help` shows that stage's flags only, a flag of another stage draws one warning line, and intervals
    scale with a shortened run (`scale_intervals`); `own_help` lists the script's own flags there
    (`help_text`).
    """
    argv = renamed_flags(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--configs", nargs="+", default=["defaults"])
    known, rest = pre.parse_known_args(argv)
    names = list(known.configs)
    if "defaults" not in names:
        names.insert(0, "defaults")
    merged = merge_blocks(names, path)
    if stage and ("-h" in rest or "--help" in rest):
        print_help(stage, description, merged, path, own=own_help)
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--configs", nargs="+", default=["defaults"], help="config blocks, merged left to right")
    for key, value in merged.items():
        parser.add_argument(f"--{key}", type=str, default=None, help=f"default: {value!r}")
    # argparse would print a usage error without a suggestion; check unknown flags ourselves first.
    for token in rest:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            if key not in merged and key != "help":
                raise ConfigError(_unknown_message("flag", "--" + key, ["--" + k for k in merged] + list(extra_flags)))
    args = parser.parse_args(argv)
    config = Config(merged)
    for key, default in merged.items():
        text = getattr(args, key)
        if text is None:
            continue
        try:
            config[key] = parse_value(text, default)
        except ValueError as err:
            raise ConfigError(f"--{key}: {err}") from None
    config["configs"] = names
    _canonical_task_names(config)
    if stage:
        for line in foreign_flags(stage, rest, path):
            print(line, file=sys.stderr)
        given = {token[2:].split("=", 1)[0] for token in rest if token.startswith("--")}
        note = scale_intervals(stage, config, merged, given)
        if note:
            print(note, file=sys.stderr)
    return config


def merge_blocks(names: list[str], path: pathlib.Path) -> dict:
    """The blocks `names` of `path` merged left to right; an unknown block, or a key that `defaults` does not
    define, is an error naming the closest valid one."""
    blocks = read_blocks(path)
    merged: dict = {}
    for name in names:
        if name not in blocks:
            raise ConfigError(_unknown_message("config block", name, blocks.keys()))
        merged = merge(merged, blocks[name] or {})
    defaults = blocks.get("defaults", {})
    for name in names:
        for key in blocks[name] or {}:
            if key not in defaults:
                raise ConfigError(f"block '{name}' sets {_unknown_message('config key', key, defaults.keys())}")
    return merged


def _canonical_task_names(config: Config) -> None:
    """Store one spelling of every task name, whichever natural form was typed (envs.tasks)."""
    from envs.tasks import TaskNameError, canonical_task, canonical_tasks

    for key, canonical in (("task", canonical_task), ("source_tasks", canonical_tasks)):
        if config.get(key):
            try:
                config[key] = canonical(config[key])
            except TaskNameError as err:
                raise ConfigError(f"--{key}: {err}") from None


HISTORY_FILE = "config_history.jsonl"


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """key -> (old value, new value) for every key whose value differs (or exists on one side only)."""
    missing = object()
    changes = {}
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            changes[key] = (None if a is missing else a, None if b is missing else b)
    return changes


def _commits(history: pathlib.Path) -> list[str]:
    """The commit of each line of a config history, in order ('unrecorded' for lines from before the record)."""
    import json

    try:
        lines = history.read_text().splitlines()
        return [json.loads(line).get("commit", "unrecorded") for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


def run_commits(logdir: pathlib.Path | str) -> list[str]:
    """The commits a run's steps ran on, in order (its config history); ['unrecorded'] for a run from before."""
    return list(dict.fromkeys(_commits(pathlib.Path(logdir) / HISTORY_FILE))) or ["unrecorded"]


def record_config(config: dict, logdir: pathlib.Path | str, step: int = 0) -> dict[str, tuple]:
    """Write `<logdir>/config.yaml` and keep the history of which config ran from which step.

    `<logdir>/config_history.jsonl` gets one line `{"from_step", "time", "config", "changed"}` each time a
    run (re)starts with a config that differs from the previous one, so the config of any step is the one
    of the last line whose `from_step` is not after it. A changed config prints one warning line naming
    the changed keys. Returns the changes (empty for a new run or an unchanged resume)."""
    import json
    import time

    from ruamel.yaml import YAML

    logdir = pathlib.Path(logdir)
    current, history = logdir / "config.yaml", logdir / HISTORY_FILE
    old = YAML(typ="safe", pure=True).load(current.read_text()) if current.is_file() else None
    changes = config_changes(dict(old), dict(config)) if isinstance(old, dict) else {}
    lines, commit = [], tools.code_commit()
    if old is not None and not history.is_file():  # a run from before the history: its config ran first
        lines.append({"from_step": 0, "time": current.stat().st_mtime, "config": old, "changed": {}})
    # A resume on other code is a line too: the history then says which commit ran which steps.
    if old is None or changes or not history.is_file() or (_commits(history) or [None])[-1] != commit:
        lines.append({"from_step": int(step), "time": time.time(), "config": dict(config),
                      "changed": {k: list(v) for k, v in changes.items()}, "commit": commit})
    if changes:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        print(f"warning: {logdir} continues at step {step} with a changed config: {shown} (earlier configs are kept "
              f"in {history})", file=sys.stderr, flush=True)
    save_config(config, logdir)
    if lines:
        with open(history, "a") as f:
            f.writelines(json.dumps(line, default=str) + "\n" for line in lines)
    return changes


def save_config(config: dict, logdir: pathlib.Path | str) -> pathlib.Path:
    """Write the resolved config to `<logdir>/config.yaml` (atomically)."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    text = io.StringIO()
    yaml.dump(dict(config), text)
    data = text.getvalue().encode()
    return atomic_write(pathlib.Path(logdir) / "config.yaml", lambda f: f.write(data))


# --- schedules ---------------------------------------------------------------------------------

_NUMBER = r"\s*([-+0-9.eE]+)\s*"


def schedule(spec: str | float | int) -> Callable[[int], float]:
    """Parse a schedule: a constant, `linear(a,b,n)` (a to b over n steps, then b) or `warmup(n,v)`
    (0 to v over n steps, then v). Returns a function of the step."""
    if isinstance(spec, (int, float)):
        value = float(spec)
        return lambda step: value
    text = str(spec).strip()
    try:
        value = float(text)
        return lambda step: value
    except ValueError:
        pass
    match = re.fullmatch(rf"linear\({_NUMBER},{_NUMBER},{_NUMBER}\)", text)
    if match:
        start, end, duration = (float(g) for g in match.groups())
        if duration <= 0:
            raise ConfigError(f"schedule '{text}': duration must be positive")
        return lambda step: start + (end - start) * min(max(step / duration, 0.0), 1.0)
    match = re.fullmatch(rf"warmup\({_NUMBER},{_NUMBER}\)", text)
    if match:
        duration, value = (float(g) for g in match.groups())
        if duration <= 0:
            raise ConfigError(f"schedule '{text}': duration must be positive")
        return lambda step: value * min(max(step / duration, 0.0), 1.0)
    raise ConfigError(f"cannot parse schedule '{text}'; use a number, linear(a,b,n) or warmup(n,v)")


# --- per-stage flags ---------------------------------------------------------------------------------------------
# Which config keys each stage reads, and its `--help`: its own flags only, grouped by the sections of `configs.yaml`'s
# `defaults` block, each with the description its comment there gives. A stage owns whole sections (`# --- name ---`
# headings; a trailing `*` matches every section starting with the name) plus a few single keys. A flag of another
# stage is accepted but warned about, since the stage ignores it.

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
    "dreamer_distill.py": ("steps", ("log_every", "eval_every", "checkpoint_every", "video_every", "probe_every")),
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
