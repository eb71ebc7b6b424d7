"""Run an experiment sweep (source data, teachers, students over targets x methods x seeds, OOD, report) on Ray.

  python sweep.py sweeps/example.yaml                  # local Ray sized to this machine
  python sweep.py sweeps/example.yaml --address auto   # the same sweep on a running Ray cluster

Running the same command again starts only what is not finished. The spec format: README.md ("Sweeps").
"""
from __future__ import annotations

import argparse
import shlex
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--address", default=None, help="Ray cluster address, or 'auto'; default: a local Ray")
    parser.add_argument("--num_cpus", type=int, default=None, help="local Ray: CPUs to use (default: all)")
    parser.add_argument("--num_gpus", type=int, default=None, help="local Ray: GPUs to use (default: all)")
    parser.add_argument("--retries", type=int, default=2, help="resumes of a job whose process was killed")
    parser.add_argument("--dry_run", action="store_true", help="print the job commands and exit")
    args = parser.parse_args(argv)

    from sweeps import jobs as job_graph, runner, spec as spec_module
    from sweeps.progress import Progress

    try:
        spec = spec_module.load(args.spec, runner.REPO)
    except spec_module.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    jobs = job_graph.build(spec)
    if args.dry_run:
        for job in jobs:
            print(f"{job.name}: {shlex.join(job.command)}")
        return 0
    progress = Progress(len(jobs))
    if all(job.done_marker.exists() for job in jobs):
        outcomes = {job.name: runner.Outcome("done", skipped=True) for job in jobs}  # nothing to run: no Ray
    else:
        runner.init_ray(args.address, args.num_cpus, args.num_gpus)
        try:
            outcomes = runner.run(jobs, progress, retries=args.retries)
        except KeyboardInterrupt:
            return 130
    print(runner.summary(outcomes, jobs), flush=True)
    report = spec.root / "report" / "results.md"
    if report.exists():
        print(f"report: {report}")
    return 0 if all(o.state == "done" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
