"""Student runs from their logdirs: eval curves from metrics.jsonl, settings from config.yaml."""
from __future__ import annotations

import dataclasses
import glob
import json
import pathlib
import re

import numpy as np

from envs.tasks import short_name
from tools import UsageError

EVAL_KEYS = {"success": "eval/success_any", "success_final": "eval/success_final", "return": "eval/return"}
SEED_DIR = re.compile(r"seed(\d+)$")


@dataclasses.dataclass
class Run:
    path: pathlib.Path
    target: str
    method: str
    seed: int
    steps: np.ndarray                   # (E,) env steps of the evaluations
    curves: dict[str, np.ndarray]       # EVAL_KEYS name -> (E,)
    eval_episodes: int
    total_steps: int                    # the run's configured env steps
    config: dict
    eval_goals: str                     # how its evaluation goals were chosen (training.evaluation.goal_rule)

    @property
    def complete(self) -> bool:
        return len(self.steps) > 0 and self.steps[-1] >= self.total_steps


def method_of(config: dict) -> str:
    """Sweep layouts name the method by folder; elsewhere the config does (Dreamer without distillation)."""
    return str(config.get("distill_mode", "comet")) if config.get("use_distill") else "dreamer"


def _setting(config: dict, key: str, path: pathlib.Path, rows: dict | None = None, metric: str = ""):
    """config[key]; else the value the metrics logged under `metric` (their last evaluation's); else one line
    naming the folder and the key."""
    if key in config:
        return config[key]
    logged = [row[metric] for _, row in sorted(rows.items()) if metric in row] if rows and metric else []
    if logged:
        return logged[-1]
    raise UsageError(f"{path}: config.yaml has no '{key}'" + (f" and metrics.jsonl no '{metric}'" if metric else "")
                     + "; add it to config.yaml or leave the folder out")


SKIP_HINT = "; pass --skip_bad to leave this run out"


def read_config(path: pathlib.Path, hint: str = SKIP_HINT) -> dict:
    """<path>/config.yaml as a dict; unreadable or not a mapping: a UsageError naming the file."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        config = YAML(typ="safe", pure=True).load((path / "config.yaml").read_text())
    except OSError as err:
        raise UsageError(f"{path / 'config.yaml'}: cannot read ({err.strerror}){hint}") from None
    except YAMLError as err:
        raise UsageError(f"{path / 'config.yaml'}: not valid YAML ({str(err).splitlines()[0]}){hint}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path / 'config.yaml'}: not a mapping of settings{hint}")
    return config


def read_rows(path: pathlib.Path, hint: str = SKIP_HINT) -> list[dict]:
    """Every row of <path>/metrics.jsonl; a line that is not JSON: a UsageError naming the file and line."""
    rows = []
    try:
        with open(path / "metrics.jsonl") as f:
            for number, line in enumerate(f, 1):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UsageError(f"{path / 'metrics.jsonl'}:{number}: not a JSON line (a torn write?){hint}") \
                        from None
    except OSError as err:
        raise UsageError(f"{path / 'metrics.jsonl'}: cannot read ({err.strerror}){hint}") from None
    return rows


def read_run(path: pathlib.Path) -> Run:
    """The run in folder `path`; an unreadable metrics.jsonl line or config.yaml is a UsageError naming the file."""
    from training.evaluation import goal_rule

    config = read_config(path)
    rows: dict[int, dict] = {}
    for row in read_rows(path):
        if EVAL_KEYS["success"] in row:
            rows[int(row["step"])] = row  # a repeated step keeps its last value
    steps = np.array(sorted(rows), dtype=np.int64)
    curves = {name: np.array([float(rows[s].get(key, np.nan)) for s in steps]) for name, key in EVAL_KEYS.items()}
    match = SEED_DIR.search(path.name)
    if match and path.parent.parent != path.parent:
        target, method, seed = path.parent.parent.name, path.parent.name, int(match.group(1))
    else:
        task, seed = _setting(config, "task", path), int(_setting(config, "seed", path))
        target, method = short_name(str(task)), method_of(config)
    episodes = int(_setting(config, "eval_episodes", path, rows, "eval/episodes"))
    return Run(path, target, method, seed, steps, curves, episodes, int(_setting(config, "steps", path)), config,
               goal_rule(config))


def find_runs(patterns: list[str], skip_bad: bool = False) -> tuple[list[Run], list[str]]:
    """Every folder with metrics.jsonl and config.yaml under the given folders or globs, sorted; with `skip_bad` an
    unreadable run is left out with a note (the second list) instead of stopping the report."""
    found: set[pathlib.Path] = set()
    for pattern in patterns:
        matches = [pathlib.Path(p) for p in sorted(glob.glob(pattern))] or [pathlib.Path(pattern)]
        for match in matches:
            if not match.exists():
                raise UsageError(f"{pattern}: no such file or folder")
            for metrics in [match / "metrics.jsonl", *match.rglob("metrics.jsonl")]:
                if metrics.is_file() and (metrics.parent / "config.yaml").is_file():
                    found.add(metrics.parent)
    runs, skipped = [], []
    for path in sorted(found):
        try:
            runs.append(read_run(path))
        except UsageError as err:
            if not skip_bad:
                raise
            skipped.append(f"skipped: {str(err).removesuffix(SKIP_HINT)}")
    return sorted(runs, key=lambda r: (r.target, r.method, r.seed, str(r.path))), skipped
