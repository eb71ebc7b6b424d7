"""One sweep from its spec file to its summary: load and check the spec, build the job graph, run it on a local Ray
(living as long as this call) or a cluster, print the summary. sweep.py and the quick start call `drive`."""
from __future__ import annotations

import contextlib
import shlex

import tools

LOG = "sweep.log"  # the sweep's own lines (events, summary) of every run, beside its jobs
RAY_LOG = "ray.log"  # Ray's messages to the driver (sweeps.cluster.messages_to)


def drive(spec_path: str, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
          retries: int = 2, dry_run: bool = False, archive: str | None = None) -> None:
    """Run every unfinished job of the sweep `spec_path`; raise tools.RunFailed if any job failed.
    `archive`: a folder that keeps each finished job's small outputs and continues the sweep from them
    (sweeps/archive.py)."""
    from sweeps import archive as archives, jobs as job_graph, local_ray, runner, spec as spec_module
    from sweeps.progress import Progress

    spec = spec_module.load(spec_path, runner.REPO)
    jobs = job_graph.build(spec)
    store = archives.Archive(archive, spec.root) if archive else None
    if dry_run:
        for job in jobs:
            print(f"{job.name}: {shlex.join(job.command)}" + (" (archived)" if store and store.has(job) else ""))
        return
    if store is not None:
        jobs = archives.prepare(store, jobs, runner.finished_before(jobs), lambda text: print(f"[sweep] {text}"))
    spec.root.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(jobs), log=spec.root / LOG)
    if address is None:
        local_ray.clean_up(spec.root)  # what a driver killed with kill -9 left running
    if all(job.done_marker.exists() for job in jobs):
        outcomes = {job.name: runner.Outcome("done", skipped=True) for job in jobs}  # nothing to run: no Ray
    else:
        # A local Ray lives exactly as long as this driver; a cluster's Ray outlives it.
        with local_ray.session(spec.root) if address is None else contextlib.nullcontext():
            runner.init_ray(address, num_cpus, num_gpus, ray_log=spec.root / RAY_LOG)
            outcomes = runner.run(jobs, progress, retries=retries, on_done=store.store if store else None)
    progress.event(runner.summary(outcomes, jobs), prefix="")
    report = spec.root / "report" / "results.md"
    if report.exists():
        print(f"report: {report}")
    if not all(o.state == "done" for o in outcomes.values()):
        raise tools.RunFailed("some jobs failed (listed above with their logs)")
