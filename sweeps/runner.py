"""Run a job graph on Ray: each job a task with its num_cpus / num_gpus, started once what it needs exists.

Finished jobs (done marker beside their logdir) are never started again, so re-running a sweep continues it. Every
attempt of a job is this runner's (Ray's own task retries are off): a job whose process was killed resumes inside its
task, one whose worker or node was lost is submitted again, and both count against `--retries`, so the log, the done
marker and the summary number the attempts alike and name the node of each.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
import uuid

import tools
from sweeps import cluster, local_ray, task
from sweeps.jobs import Job
from sweeps.progress import Progress

REPO = pathlib.Path(__file__).resolve().parents[1]
START_ATTEMPTS = 3  # ray.init of a local Ray on a heavily loaded machine can miss Ray's startup deadline
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass
class Outcome:
    state: str = "waiting"     # waiting | running | done | failed | blocked
    skipped: bool = False      # already done before this run
    result: dict | None = None
    attempts: list = dataclasses.field(default_factory=list)  # this run's attempts: {attempt, node, outcome}
    token: str = ""            # marks the attempt headers of the job's current task in its log


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None,
             ray_log: pathlib.Path | None = None) -> None:
    """A new local Ray of this driver's own (never another Ray on the machine), or the running cluster at `address`
    (`auto` or host:port), checked first (cluster.connectable). Ray's own messages go to `ray_log`."""
    cluster.messages_to(ray_log)
    try:
        _connect(address, num_cpus, num_gpus)
    finally:
        tools.sigterm_as_ctrl_c()  # Ray's core replaced the handler with one that aborts the driver


def _connect(address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    import ray

    # Workers import `sweeps.task` from this checkout (on a cluster: the same path on every node).
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}}
    if address:
        ray.init(address=cluster.connectable(address), runtime_env=env, log_to_driver=False)
        return
    # Ray starts its workers at niceness 15: on a machine shared with other work the sweep's stage
    # scripts then get only the CPU nobody else wants. Jobs run at the driver's priority instead.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray warns on every local start that it enabled token authentication by default; that default is what a
    # sweep wants (choosing it explicitly with RAY_AUTH_MODE=token locks the sweep's own workers out).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            # address="local": a new Ray, whatever RAY_ADDRESS or Ray's temp folder name (a cluster, a dead one)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env=env,
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


def _report_failure(progress: Progress, job: Job, outcome: Outcome) -> None:
    result = outcome.result
    lines = "\n".join("    | " + line for line in result["tail"][-12:])
    progress.event(f"FAILED {job.name} ({outcome.attempts[-1]['outcome'] if outcome.attempts else result['code']}, "
                   f"{len(outcome.attempts)} attempt(s)); logdir {job.logdir}, log {job.log}; last lines:\n{lines}")


def _submit(job: Job, outcome: Outcome, remote, retries: int):
    """Start the job's next attempts as one Ray task (no Ray retry: a lost task comes back to `_finish`)."""
    outcome.token = uuid.uuid4().hex[:12]
    return remote.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=job.name, max_retries=0).remote(
        job.command, str(REPO), str(job.log), str(job.done_marker), str(job.logdir), int(max(1, job.num_cpus)),
        len(outcome.attempts) + 1, retries + 1, tuple(outcome.attempts), outcome.token)


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
            running[_submit(job, outcome, remote, retries)] = job
            free = {"CPU": free["CPU"] - job.num_cpus, "GPU": free["GPU"] - job.num_gpus}
            outcome.state = "running"
            progress.event(f"started {job.name}" + (f" (attempt {len(outcome.attempts) + 1} of {retries + 1})"
                                                    if outcome.attempts else ""))


def finished_before(jobs: list[Job]) -> set[str]:
    """Jobs not to start again: those with a done marker, except a report (`after_settled`) made before some
    of its inputs had finished (a spec that grew a seed or a method gets its report made again)."""
    done = {job.name for job in jobs if job.done_marker.exists()}
    return {job.name for job in jobs if job.name in done and not (job.after_settled and not set(job.deps) <= done)}


def run(jobs: list[Job], progress: Progress, retries: int = 2, poll_s: float = 1.0,
        on_done=None) -> dict[str, Outcome]:
    """Drive the graph to the end; Ctrl-C (or SIGTERM) stops the running jobs, each after it saved its checkpoint,
    and they resume next time. `on_done(job)` runs as each job finishes successfully, before any job that needs it
    starts."""
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
                _finish(job, ref, outcomes[job.name], progress, retries)
                if on_done is not None and outcomes[job.name].state == "done":
                    on_done(job)
    except KeyboardInterrupt:
        _stop_running(running, progress)
        raise
    finally:
        progress.close()
    return outcomes


def _stop_running(running: dict, progress: Progress) -> None:
    """Cancel the running jobs and wait while their stages save (each task SIGINTs its stage and waits for it)."""
    import ray

    if not running:
        return
    progress.event(f"interrupted: {len(running)} running job(s) save their checkpoint and stop (up to "
                   f"{task.TERM_GRACE_S} s); they resume when this command runs again")
    for ref in running:
        ray.cancel(ref)
    try:
        ray.wait(list(running), num_returns=len(running), timeout=task.TERM_GRACE_S + 20)
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the stages still save (sweeps/guard.py)
        progress.event("not waiting any longer; the stages finish saving on their own")


def _finish(job: Job, ref, outcome: Outcome, progress: Progress, retries: int) -> None:
    import ray

    submitted = len(outcome.attempts) + 1
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker or its node was lost, with whatever attempt it ran
        _lost(job, outcome, progress, retries, submitted, err)
        return
    outcome.result = result
    outcome.attempts += result["attempts"]
    retried = f" ({len(outcome.attempts)} attempts)" if len(outcome.attempts) > 1 else ""
    if result["code"] == 0:
        outcome.state = "done"
        progress.durations.append(result["seconds"])
        progress.event(f"done {job.name} in {result['seconds']:.0f}s{retried}")
    else:
        outcome.state = "failed"
        _report_failure(progress, job, outcome)


def _lost(job: Job, outcome: Outcome, progress: Progress, retries: int, submitted: int, err: Exception) -> None:
    """Record the attempt(s) a lost task was running, and submit the job again while attempts are left."""
    first = ANSI.sub("", str(err)).strip().split("\n")[0].split(". ")[0].strip().rstrip(".")  # Ray's first sentence
    reason = f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__
    header = task.last_attempt(str(job.log), outcome.token)
    reached, node = header or (submitted, "an unknown node (it never started)")
    for attempt in range(submitted, reached):  # killed and resumed inside the task before it was lost
        outcome.attempts.append({"attempt": attempt, "node": node, "outcome": "killed by a signal"})
    outcome.attempts.append({"attempt": reached, "node": node, "outcome": f"lost with its worker or node ({reason})"})
    if reached < retries + 1:
        outcome.state = "waiting"
        progress.event(f"lost {job.name}: attempt {reached} of {retries + 1} on {node} ({reason}); it resumes from "
                       f"its logdir as attempt {reached + 1}")
        return
    outcome.state = "failed"
    outcome.result = {"code": -1, "seconds": 0.0, "tail": task.tail(str(job.log)) + [reason]}
    _report_failure(progress, job, outcome)


def summary(outcomes: dict[str, Outcome], jobs: list[Job]) -> str:
    counts = {s: sum(o.state == s for o in outcomes.values()) for s in ("done", "failed", "blocked")}
    skipped = sum(o.skipped for o in outcomes.values())
    lines = [f"{counts['done']}/{len(jobs)} jobs done ({skipped} from before, {counts['done'] - skipped} now), "
             f"{counts['failed']} failed, {counts['blocked']} blocked"]
    for job in jobs:
        outcome = outcomes[job.name]
        if len(outcome.attempts) > 1:
            steps = "; ".join(f"{a['attempt']} on {a['node']}: {a['outcome']}" for a in outcome.attempts)
            lines.append(f"  retried: {job.name}: {len(outcome.attempts)} attempts ({steps})")
        if outcome.state == "failed":
            lines.append(f"  failed: {job.name}  (log {job.log})")
    return "\n".join(lines)
