"""Aggregate student runs into results.md / .json / .csv and PNG plots (rliable IQM, mean, 95% CIs).

  python results.py runs/sweeps/my_sweep/students --out runs/sweeps/my_sweep/report
  python results.py 'runs/comet_*' 'runs/dreamer_*' --out report --last 3
  python results.py runs/sweeps/my_sweep/students --out report --skip_bad   # list unreadable runs, report the rest
  python results.py docs/results/my_study/students --out docs/results/my_study --baseline dreamer --equivalence 0.05

A folder is searched recursively for runs (metrics.jsonl + config.yaml). In a sweep layout
(<target>/<method>/seed<k>) the folders name target, method and seed; elsewhere the run's config does.
"""
from __future__ import annotations

import pathlib
import sys

import tools


def run(argv=None) -> None:
    from analysis import cli

    args = cli.parser(__doc__.splitlines()[0], __doc__).parse_args(argv)
    cli.check(args)

    from analysis import aggregate, load, report

    runs, skipped = load.find_runs(args.runs, skip_bad=args.skip_bad)
    if not runs:
        raise tools.UsageError(f"{' '.join(args.runs)}: no usable run folder (metrics.jsonl + config.yaml) found"
                               + (f"; skipped {len(skipped)} unreadable one(s)" if skipped else ""))
    table, notes = aggregate.build(runs, args.last)
    notes = skipped + notes
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
