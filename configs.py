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

from cli import UsageError
from fileio import atomic_write

ROOT = pathlib.Path(__file__).resolve().parent
CONFIG_FILE = ROOT / "configs.yaml"


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
    value = float(text)
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


def load_config(argv: Sequence[str] | None = None, description: str = "", path: pathlib.Path = CONFIG_FILE,
                extra_flags: Sequence[str] = ()) -> Config:
    """Merge `--configs` blocks and apply typed `--key value` overrides.

    Unknown blocks and unknown keys are errors naming the closest valid one (among the config keys and
    `extra_flags`, the flags a script parses itself).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--configs", nargs="+", default=["defaults"])
    known, rest = pre.parse_known_args(argv)
    blocks = read_blocks(path)
    names = list(known.configs)
    if "defaults" not in names:
        names.insert(0, "defaults")
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
    return config


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
