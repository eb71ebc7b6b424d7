"""Run an experiment sweep (source data, teachers, students over targets x methods x seeds, OOD, report) on Ray.

  python sweep.py sweeps/specs/state_methods.yaml                    # a local Ray of its own, sized to this machine
  python sweep.py sweeps/specs/state_methods.yaml --address HOST:6379  # the same sweep on a running Ray cluster
  python sweep.py SPEC.yaml --archive docs/results/NAME               # keep results in the repo, continue anywhere

Running the same command again starts only what is not finished; Ctrl-C lets the running jobs save first. The spec
format, the cluster set-up (token authentication) and what a stop, a retry or a lost node do: docs/sweeps.md.
"""
from __future__ import annotations

import argparse
import sys

import tools


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster: its head's host:port, or 'auto' (RAY_ADDRESS, else the cluster "
                             "`ray start --head` recorded here); default: a new local Ray, whatever else runs")
    parser.add_argument("--num_cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    parser.add_argument("--num_gpus", type=int, default=None, help="local Ray: GPUs to use (default: all)")
    parser.add_argument("--retries", type=int, default=2,
                        help="resumes of a job whose process was killed or whose worker or node was lost")
    parser.add_argument("--dry_run", action="store_true", help="print the job commands and exit")
    parser.add_argument("--archive", default=None,
                        help="folder (e.g. docs/results/<name>) that keeps each finished job's config, metrics, done "
                             "marker and summary (a teacher's weights too) and continues the sweep from them on any "
                             "machine (docs/evaluation.md)")
    args = parser.parse_args(argv)

    from sweeps.driver import drive

    drive(args.spec, args.address, args.num_cpus, args.num_gpus, args.retries, args.dry_run, args.archive)


def main(argv=None) -> int:
    """Exit 0: every job done; 1: some failed; 2: unusable spec; 130: interrupted (Ctrl-C or SIGTERM)."""
    return tools.run_main("sweep.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
