"""Run an experiment sweep (source data, teachers, students over targets x methods x seeds, OOD, report) on Ray.

  python sweep.py sweeps/example.yaml                  # local Ray sized to this machine
  python sweep.py sweeps/example.yaml --address auto   # the same sweep on a running Ray cluster

Running the same command again starts only what is not finished. The spec format: README.md ("Sweeps").
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys

import cli


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address, or 'auto'; default: a local Ray")
    parser.add_argument("--num_cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    parser.add_argument("--num_gpus", type=int, default=None, help="local Ray: GPUs to use (default: all)")
    parser.add_argument("--retries", type=int, default=2, help="resumes of a job whose process was killed")
    parser.add_argument("--dry_run", action="store_true", help="print the job commands and exit")
    args = parser.parse_args(argv)

    from sweeps import jobs as job_graph, local_ray, runner, spec as spec_module
    from sweeps.progress import Progress

    spec = spec_module.load(args.spec, runner.REPO)
    jobs = job_graph.build(spec)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name}: {shlex.join(job.command)}")
        return
    progress = Progress(len(jobs))
    if args.address is None:
        local_ray.clean_up(spec.root)  # what a driver killed with kill -9 left running
    if all(job.done_marker.exists() for job in jobs):
        outcomes = {job.name: runner.Outcome("done", skipped=True) for job in jobs}  # nothing to run: no Ray
    else:
        # A local Ray lives exactly as long as this driver; a cluster's Ray outlives it.
        with local_ray.session(spec.root) if args.address is None else contextlib.nullcontext():
            runner.init_ray(args.address, args.num_cpus, args.num_gpus)
            outcomes = runner.run(jobs, progress, retries=args.retries)
    print(runner.summary(outcomes, jobs), flush=True)
    report = spec.root / "report" / "results.md"
    if report.exists():
        print(f"report: {report}")
    if not all(o.state == "done" for o in outcomes.values()):
        raise cli.RunFailed("some jobs failed (listed above with their logs)")


def main(argv=None) -> int:
    """Exit 0: every job done; 1: some failed; 2: unusable spec; 130: interrupted (Ctrl-C or SIGTERM)."""
    return cli.run_main("sweep.py", run, argv)


if __name__ == "__main__":
    sys.exit(main())
