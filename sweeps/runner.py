"""Run a job graph on Ray: each job a task with its num_cpus / num_gpus, started once what it needs exists.

Finished jobs (done marker beside their logdir) are never started again, so re-running a sweep continues it.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

from sweeps import local_ray, task
from sweeps.jobs import Job
from sweeps.progress import Progress

REPO = pathlib.Path(__file__).resolve().parents[1]
START_ATTEMPTS = 3  # ray.init of a local Ray on a heavily loaded machine can miss Ray's startup deadline


@dataclasses.dataclass
class Outcome:
    state: str = "waiting"     # waiting | running | done | failed | blocked
    skipped: bool = False      # already done before this run
    result: dict | None = None


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    """A local Ray sized to this machine, or a running cluster (`auto` or an address)."""
    import ray

    # Workers import `sweeps.task` from this checkout (on a cluster: the same path on every node).
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        # Ray starts its workers at niceness 15: on a machine shared with other work the sweep's stage
        # scripts then get only the CPU nobody else wants. Jobs run at the driver's priority instead.
        os.environ.setdefault("RAY_worker_niceness", "0")
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=env,
                         log_to_driver=False)
                return
            except Exception as err:  # Ray raises a bare Exception when its node misses a fixed 30 s deadline
                if "timed out during startup" not in str(err) or attempt == START_ATTEMPTS:
                    raise
                ray.shutdown()
                if os.environ.get(local_ray.MARK):  # what the failed start left running: nothing of a job yet
                    local_ray.stop(local_ray.marked(os.environ[local_ray.MARK]))
                print(f"[sweep] the local Ray did not start within Ray's 30 s (a busy machine?); attempt "
                      f"{attempt + 1} of {START_ATTEMPTS}", flush=True)


def _ready(job: Job, outcomes: dict[str, Outcome]) -> bool | None:
    """True: can start; False: not yet; None: can never run (a dependency failed)."""
    states = [outcomes[d].state for d in job.deps]
    if job.after_settled:
        if any(s in ("waiting", "running") for s in states):
            return False
        return True if "done" in states or not states else None
    if any(s in ("failed", "blocked") for s in states):
        return None
    return all(s == "done" for s in states)


def _capacity(running: dict) -> dict:
    """CPUs and GPUs of the cluster not held by this sweep's running jobs (nodes may join or leave)."""
    import ray

    total = ray.cluster_resources()
    return {"CPU": total.get("CPU", 0.0) - sum(j.num_cpus for j in running.values()),
            "GPU": total.get("GPU", 0.0) - sum(j.num_gpus for j in running.values())}


def _fits(job: Job, free: dict) -> bool:
    return job.num_cpus <= free["CPU"] + 1e-9 and job.num_gpus <= free["GPU"] + 1e-9


def _report_failure(progress: Progress, job: Job, result: dict) -> None:
    lines = "\n".join("    | " + line for line in result["tail"][-12:])
    progress.event(f"FAILED {job.name} (exit {result['code']}, {result['attempts']} attempt(s)); logdir {job.logdir}, "
                   f"log {job.log}; last lines:\n{lines}")


def _submit_ready(order: list[Job], outcomes: dict, running: dict, remote, progress: Progress, retries: int) -> None:
    """Start every job whose inputs exist, as far as the cluster has room; mark those that never can run."""
    free = _capacity(running)
    for job in order:
        outcome = outcomes[job.name]
        if outcome.state != "waiting":
            continue
        ready = _ready(job, outcomes)
        if ready is None:
            outcome.state = "blocked"
            progress.event(f"blocked {job.name}: a job it needs failed")
        elif ready and (not running or _fits(job, free)):
            # Submitting only what the cluster can start now keeps 'running' true and the order ours.
            ref = remote.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=job.name).remote(
                job.command, str(REPO), str(job.log), str(job.done_marker), int(max(1, job.num_cpus)), retries)
            running[ref] = job
            free = {"CPU": free["CPU"] - job.num_cpus, "GPU": free["GPU"] - job.num_gpus}
            outcome.state = "running"
            progress.event(f"started {job.name}")


def finished_before(jobs: list[Job]) -> set[str]:
    """Jobs not to start again: those with a done marker, except a report (`after_settled`) made before some
    of its inputs had finished (a spec that grew a seed or a method gets its report made again)."""
    done = {job.name for job in jobs if job.done_marker.exists()}
    return {job.name for job in jobs if job.name in done and not (job.after_settled and not set(job.deps) <= done)}


def run(jobs: list[Job], progress: Progress, retries: int = 2, poll_s: float = 1.0,
        on_done=None) -> dict[str, Outcome]:
    """Drive the graph to the end; Ctrl-C cancels the running jobs (they save and resume next time).
    `on_done(job)` runs as each job finishes successfully, before any job that needs it starts."""
    import ray

    outcomes = {job.name: Outcome() for job in jobs}
    for name in finished_before(jobs):
        outcomes[name] = Outcome("done", skipped=True)
    skipped = sum(o.skipped for o in outcomes.values())
    if skipped:
        progress.event(f"{skipped} of {len(jobs)} jobs already done; not started again")
    remote = ray.remote(task.run_job)
    needed = {d for job in jobs for d in job.deps}
    # Jobs others wait for (data, teachers) go first; the rest keep the spec's order.
    order = sorted(jobs, key=lambda j: j.name not in needed)
    running: dict = {}
    try:
        while True:
            _submit_ready(order, outcomes, running, remote, progress, retries)
            counts = {s: sum(o.state == s for o in outcomes.values()) for s in ("done", "running", "failed", "waiting",
                                                                                 "blocked")}
            progress.status(counts)
            if not running:
                break
            finished, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            for ref in finished:
                job = running.pop(ref)
                _finish(job, ref, outcomes[job.name], progress)
                if on_done is not None and outcomes[job.name].state == "done":
                    on_done(job)
    except KeyboardInterrupt:
        progress.event(f"interrupted: stopping {len(running)} running job(s); they resume when this command runs again")
        for ref in running:
            ray.cancel(ref)
        raise
    finally:
        progress.close()
    return outcomes


def _finish(job: Job, ref, outcome: Outcome, progress: Progress) -> None:
    import ray

    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died more often than Ray retries it
        result = {"code": -1, "attempts": 0, "seconds": 0.0, "tail": task.tail(str(job.log)) + [str(err).splitlines()[0]]}
    outcome.result = result
    if result["code"] == 0:
        outcome.state = "done"
        progress.durations.append(result["seconds"])
        progress.event(f"done {job.name} in {result['seconds']:.0f}s")
    else:
        outcome.state = "failed"
        _report_failure(progress, job, result)


def summary(outcomes: dict[str, Outcome], jobs: list[Job]) -> str:
    counts = {s: sum(o.state == s for o in outcomes.values()) for s in ("done", "failed", "blocked")}
    skipped = sum(o.skipped for o in outcomes.values())
    lines = [f"{counts['done']}/{len(jobs)} jobs done ({skipped} from before, {counts['done'] - skipped} now), "
             f"{counts['failed']} failed, {counts['blocked']} blocked"]
    for job in jobs:
        if outcomes[job.name].state == "failed":
            lines.append(f"  failed: {job.name}  (log {job.log})")
    return "\n".join(lines)
