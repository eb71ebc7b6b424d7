"""collect_data.py's own flags (the rest are config keys, read through configs.load_config): its parser and the checks
of their values. The sweep checks a spec's `collect.flags` with the same parser before any job runs."""
from __future__ import annotations

import argparse
import os

import tools
from tools import OBS_MODES


def parser() -> argparse.ArgumentParser:
    # --help is configs.print_help's (grouped like every stage's), so argparse adds none of its own.
    out = tools.UsageParser(prog="collect_data", allow_abbrev=False, add_help=False)
    out.add_argument("--tasks", default="", help="comma-separated task names; empty: the config's source_tasks")
    out.add_argument("--episodes", type=int, default=50, help="episodes per task (existing ones are kept)")
    out.add_argument("--obs", choices=OBS_MODES, default="pixel", help=f"what the episodes store: {' | '.join(OBS_MODES)}")
    out.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to expert actions")
    out.add_argument("--random_frac", type=float, default=0.0, help="fraction of steps with uniform random actions")
    out.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel episode workers")
    out.add_argument("--out", default="data", help="root folder; one sub-folder per task")
    out.add_argument("--seed", type=int, default=0, help="episode i of a task depends only on (seed, task, i)")
    return out


def check(args) -> None:
    """One UsageError naming the first flag whose value is out of range."""
    for ok, message in ((args.episodes >= 0, f"--episodes must be >= 0, got {args.episodes}"),
                        (args.noise >= 0, f"--noise must be >= 0, got {args.noise}"),
                        (0.0 <= args.random_frac <= 1.0, f"--random_frac must lie in [0, 1], got {args.random_frac}"),
                        (args.workers >= 1, f"--workers must be >= 1, got {args.workers}"),
                        (args.seed >= 0, f"--seed must be >= 0, got {args.seed}")):
        if not ok:
            raise tools.UsageError(message)
