"""results.py's flags: its parser and the checks of their values. The sweep checks a spec's `report` block with the
same parser before any job runs."""
from __future__ import annotations

import argparse

import tools


def _flag(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")


def parser(description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    out = tools.UsageParser(prog="results.py", description=description, epilog=epilog, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("runs", nargs="+", help="run folders, folders holding runs, or globs")
    out.add_argument("--out", required=True, help="folder for results.md, results.json, results.csv and plots")
    out.add_argument("--last", type=int, default=3, help="evaluations averaged into the final score")
    out.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (same seed, same intervals)")
    out.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    out.add_argument("--baseline", default="dreamer",
                     help="arm the paired differences are taken against (absent: every pair of arms)")
    out.add_argument("--equivalence", type=float, default=0.05,
                     help="margin δ of the paired verdict ('not better by more than δ'; docs/evaluation.md)")
    out.add_argument("--skip_bad", type=_flag, nargs="?", const=True, default=False,
                     help="leave out (and list) a run whose metrics.jsonl or config.yaml cannot be read, instead of "
                          "stopping at it")
    return out


def check(args) -> None:
    """One UsageError naming the first flag whose value is out of range."""
    if args.last < 1 or args.reps < 10:
        raise tools.UsageError(f"need --last >= 1 and --reps >= 10, got {args.last} and {args.reps}")
    if not 0 < args.equivalence < 1:
        raise tools.UsageError(f"--equivalence must lie in (0, 1) (a difference of success rates), got "
                               f"{args.equivalence}")
