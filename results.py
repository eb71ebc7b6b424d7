"""Aggregate student runs into results.md / .json / .csv and PNG plots (rliable IQM, mean, 95% CIs).

  python results.py runs/sweeps/my_sweep/students --out runs/sweeps/my_sweep/report
  python results.py 'runs/comet_*' 'runs/dreamer_*' --out report --last 3
  python results.py docs/results/my_study/students --out docs/results/my_study --baseline dreamer --equivalence 0.05

A folder is searched recursively for runs (metrics.jsonl + config.yaml). In a sweep layout
(<target>/<method>/seed<k>) the folders name target, method and seed; elsewhere the run's config does.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import tools


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders, folders holding runs, or globs")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json, results.csv and plots")
    parser.add_argument("--last", type=int, default=3, help="evaluations averaged into the final score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (same seed, same intervals)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    parser.add_argument("--baseline", default="dreamer",
                        help="arm the paired differences are taken against (absent: every pair of arms)")
    parser.add_argument("--equivalence", type=float, default=0.05,
                        help="margin δ of the paired verdict ('not better by more than δ'; docs/evaluation.md)")
    args = parser.parse_args(argv)
    if args.last < 1 or args.reps < 10:
        parser.error(f"need --last >= 1 and --reps >= 10, got {args.last} and {args.reps}")
    if not 0 < args.equivalence < 1:
        parser.error(f"--equivalence must lie in (0, 1) (a difference of success rates), got {args.equivalence}")

    from analysis import aggregate, load, report

    runs = load.find_runs(args.runs)
    if not runs:
        raise tools.UsageError(f"{' '.join(args.runs)}: no run folder (metrics.jsonl + config.yaml) found")
    table, notes = aggregate.build(runs, args.last)
    for note in notes:
        print(f"note: {note}")
    path = report.write(table, runs, notes, pathlib.Path(args.out), args.seed, args.reps, args.baseline,
                        args.equivalence)
    print(report.tables(path))
    print(f"\nwritten: {path} (+ results.json, results.csv, curves.png, iqm_curves.png, profiles.png)")


def main(argv=None) -> int:
    """Exit 0: report written; 2: no usable runs (one line says why)."""
    return tools.run_main("results.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
