"""sweep.py on a real local Ray (2 CPUs) with tiny state-mode runs: a killed job, a killed or interrupted driver (every
running job saves the step it reached), a local sweep beside another Ray, the attempts of a retried job."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDENT = {"steps": 160, "eval_every": 80, "checkpoint_every": 80, "log_every": 80}
# Runs until stopped, and its only checkpoint is the one a stop makes it write; a row every 20 env steps.
LONG = {"steps": 100_000, "eval_every": 100_000, "checkpoint_every": 100_000, "log_every": 20}


def write_spec(path: pathlib.Path, root: pathlib.Path, methods: dict, teachers: bool,
               student: dict = STUDENT) -> pathlib.Path:
    from ruamel.yaml import YAML

    spec = {"root": str(root), "resources": {"num_cpus": 1},
            "flags": {"configs": ["defaults", "metaworld", "quickstart", "debug"], "progress": False},
            "students": {"targets": ["metaworld_drawer_close"], "seeds": [0, 1], "flags": student, "methods": methods},
            "report": {"reps": 200, "last": 1}}
    if teachers:
        spec["collect"] = {"tasks": ["metaworld_reach", "metaworld_door_open"],
                           "flags": {"episodes": 2, "obs": "state", "time_limit": 40}}
        spec["teachers"] = {"moe": {"flags": {"pretrain_iterations": 3}}}
    with open(path, "w") as f:
        YAML().dump(spec, f)
    return path


def sweep(spec: pathlib.Path, *flags: str, **popen) -> subprocess.Popen:
    """The driver as a background job of a non-interactive shell starts it: with SIGINT ignored, which its
    Ctrl-C handling must undo."""
    return subprocess.Popen([sys.executable, "sweep.py", str(spec), *(flags or ("--num_cpus", "2"))], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), **popen)


def stage_pids(logdir: pathlib.Path) -> list[int]:
    """Processes whose command line runs a stage script on `logdir`."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and str(logdir).encode() in cmd and any(c.endswith(b"dreamer_distill.py") for c in cmd):
            pids.append(int(proc.name))
    return pids


def eval_steps(logdir: pathlib.Path) -> list[int]:
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "eval/success_any" in r]


def wait_for(condition, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def end_session(process: subprocess.Popen) -> None:
    """Safety net after a failed assertion: whatever still runs in the session of a driver this test started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sweep_finishes_survives_a_killed_job_and_is_idempotent(tmp_path):
    root = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", root, {
        "dreamer": {"flags": {"use_distill": False}},
        "comet": {"teacher": "moe", "flags": {"use_distill": True}}}, teachers=True)
    victim = root / "students/drawer_close/dreamer/seed0"
    killed = []

    def kill_victim_after_first_checkpoint():
        pids = wait_for(lambda: (victim / "latest.pt").exists() and stage_pids(victim), 120, "the victim's first checkpoint")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed.extend(pids)

    watcher = threading.Thread(target=kill_victim_after_first_checkpoint, daemon=True)
    process = sweep(spec)
    watcher.start()
    try:
        out, _ = process.communicate(timeout=400)
    finally:
        end_session(process)
    watcher.join(1)
    assert process.returncode == 0, out
    assert "Token authentication is enabled" not in out, out  # Ray's default, chosen explicitly: no warning
    assert killed, "the victim was never killed mid-run"
    assert "=== attempt 2" in (victim.parent / "seed0.log").read_text()
    for method in ("dreamer", "comet"):
        for seed in (0, 1):
            run = root / f"students/drawer_close/{method}/seed{seed}"
            steps = eval_steps(run)
            assert steps == sorted(set(steps)) and steps[-1] == STUDENT["steps"], (run, steps)
            assert (run.parent / f"seed{seed}.done").exists()
    report = (root / "report/results.md").read_text()
    assert "| drawer_close | comet | 2 |" in report and "| drawer_close | dreamer | 2 |" in report, report

    again = sweep(spec)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert "7/7 jobs done (7 from before, 0 now)" in out and "[sweep] started" not in out, out


def session_of(root: pathlib.Path, other_than: str = "") -> str:
    """The session of the local Ray the sweep at `root` runs now (sweeps.local_ray's record)."""
    def read():
        try:
            session = json.loads((root / ".ray_local.json").read_text())["session"]
        except (OSError, ValueError, KeyError):
            return None
        return session if session != other_than else None
    return wait_for(read, 120, "the sweep's local Ray")


def alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killed_or_interrupted_driver_leaves_no_ray_and_continues_and_a_bad_flag_is_reported(tmp_path):
    from sweeps.local_ray import marked

    root = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", root, {
        "dreamer": {"flags": {"use_distill": False}},
        # a schedule only the stage parses: the spec check passes it, the job fails at its start
        "broken": {"flags": {"use_distill": False, "actor_entropy": "lineer(1,0,1)"}}}, teachers=False)
    running = root / "students/drawer_close/dreamer/seed0"
    runs = [sweep(spec)]
    try:
        # Killed as soon as the student has started (its config is written before the envs start): waiting for
        # its first metrics lets a tiny run finish on an idle machine before the kill lands.
        pids = wait_for(lambda: (running / "config.yaml").exists() and stage_pids(running), 120, "a running student")
        # Ray's default worker niceness (15) would starve the jobs on a shared machine.
        assert os.getpriority(os.PRIO_PROCESS, pids[0]) == os.getpriority(os.PRIO_PROCESS, 0), "stage job reniced"
        first = session_of(root)
        runs[0].kill()
        runs[0].wait()
        # The stage processes die with their Ray workers instead of running on as orphans; some of Ray's own
        # processes (its agents) outlive the driver.
        wait_for(lambda: not any(marked(first).values()), 60, "the jobs' processes to exit")
        leftovers = marked(first)
        assert not (running.parent / "seed0.done").exists()

        # The same command again stops them, then is interrupted with Ctrl-C once a student runs again.
        runs.append(sweep(spec))
        second = session_of(root, other_than=first)
        assert not any(alive(pid) for pid in leftovers), leftovers
        wait_for(lambda: stage_pids(running), 120, "the resumed student")
        runs[1].send_signal(signal.SIGINT)
        out, _ = runs[1].communicate(timeout=200)
        assert runs[1].returncode == 130, out
        if leftovers:
            assert f"stopping {len(leftovers)} process(es) left by the previous run's local Ray" in out, out
        assert marked(second) == {} and not (root / ".ray_local.json").exists()  # its local Ray is gone

        runs.append(sweep(spec))
        third = session_of(root, other_than=second)
        out, _ = runs[2].communicate(timeout=300)
    finally:
        for process in runs:
            end_session(process)
    assert runs[2].returncode == 1, out  # the broken runs failed
    assert marked(third) == {}  # a normal exit leaves no Ray process either
    assert "FAILED students/drawer_close/broken/seed0" in out and "cannot parse schedule 'lineer(1,0,1)'" in out, out
    for seed in (0, 1):
        run = root / f"students/drawer_close/dreamer/seed{seed}"
        steps = eval_steps(run)
        assert steps == sorted(set(steps)) and steps[-1] == STUDENT["steps"], (run, steps)
    report = (root / "report/results.md").read_text()
    assert "| drawer_close | dreamer | 2 |" in report and "broken" not in report.split("## Left out")[0], report


def last_step(logdir: pathlib.Path) -> int:
    """The env step of the last metrics row a student wrote (0 before its first)."""
    try:
        lines = (logdir / "metrics.jsonl").read_text().splitlines()
        return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
    except (OSError, ValueError):
        return 0


def saved_step(logdir: pathlib.Path) -> int | None:
    import torch

    path = logdir / "latest.pt"
    return int(torch.load(path, weights_only=True)["step"]) if path.is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stopped_driver_lets_each_running_job_save_the_step_it_reached(tmp_path, how):
    """Ctrl-C, SIGTERM and kill -9 of the driver while two students run: each writes its checkpoint at (or after)
    the last step it logged before the signal. The students have no periodic checkpoint, so any latest.pt is the one
    the stop made."""
    from sweeps import local_ray

    root = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", root, {"dreamer": {"flags": {"use_distill": False}}}, teachers=False,
                      student=LONG)
    runs = [root / f"students/drawer_close/dreamer/seed{seed}" for seed in (0, 1)]
    driver = sweep(spec)
    try:
        wait_for(lambda: all(last_step(run) >= 100 for run in runs), 400, "both students past env step 100")
        reached = [last_step(run) for run in runs]
        driver.send_signal(getattr(signal, how))
        out, _ = driver.communicate(timeout=300)
        wait_for(lambda: not any(stage_pids(run) for run in runs), 300, "the students to exit")
    finally:
        end_session(driver)
        local_ray.clean_up(root)  # after kill -9: the Ray agents that outlive a driver
    assert driver.returncode == (-signal.SIGKILL if how == "SIGKILL" else 130), out
    for run, step in zip(runs, reached):
        saved = saved_step(run)
        assert saved is not None and saved >= step, (how, run.name, saved, step, out)
        assert f"interrupted: checkpoint saved at env step {saved}" in (run.parent / f"{run.name}.log").read_text()
    if how != "SIGKILL":
        assert "2 running job(s) save their checkpoint and stop" in out, out


def test_a_rerun_stops_only_the_marked_leftovers_and_refuses_a_live_driver(tmp_path):
    """sweeps.local_ray without Ray: real processes stand in for a dead driver's leftovers and for bystanders."""
    from tools import UsageError
    from sweeps import local_ray

    def spawn(mark: str | None) -> subprocess.Popen:
        env = {**os.environ, **({local_ray.MARK: mark} if mark else {})}
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    started = local_ray._started(dead.pid)
    dead.wait()
    leftover, bystander, other_session = spawn("old"), spawn(None), spawn("another")
    try:
        (tmp_path / local_ray.RECORD).write_text(json.dumps({"session": "old", "driver": dead.pid,
                                                             "driver_started": started}))
        wait_for(lambda: leftover.pid in local_ray.marked("old"), 10, "the marked process")
        assert local_ray.clean_up(tmp_path) == {leftover.pid: False}
        assert leftover.wait(15) == -signal.SIGTERM and not (tmp_path / local_ray.RECORD).exists()
        assert bystander.poll() is None and other_session.poll() is None
        (tmp_path / local_ray.RECORD).write_text(json.dumps({"session": "live", "driver": os.getpid(),
                                                             "driver_started": local_ray._started(os.getpid())}))
        with pytest.raises(UsageError, match="already running"):
            local_ray.clean_up(tmp_path)
    finally:
        for process in (leftover, bystander, other_session):
            process.kill()
            process.wait()


def test_bad_spec_is_one_line(tmp_path, capsys):
    import sweep as sweep_main

    spec = tmp_path / "spec.yaml"
    spec.write_text("root: x\nstudents: {targets: [metaworld_drawer_close], methods: {a: {teacher: moe}}}\n")
    assert sweep_main.main([str(spec)]) == 2  # tools.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(spec) in err and "teacher 'moe'" in err, err


def test_report_made_before_all_its_inputs_is_made_again(tmp_path):
    from sweeps import jobs as sweep_jobs, runner, spec as sweep_spec

    path = write_spec(tmp_path / "spec.yaml", tmp_path / "sweep", {"dreamer": {"flags": {"use_distill": False}}},
                      teachers=False)
    graph = sweep_jobs.build(sweep_spec.load(path, ROOT))
    report = next(job for job in graph if job.after_settled)
    students = [job for job in graph if job.name.startswith("students/")]
    assert len(students) == 2 and set(report.deps) == {j.name for j in students}, report.deps
    for job in graph:
        job.done_marker.parent.mkdir(parents=True, exist_ok=True)
        job.done_marker.write_text("{}")
    assert runner.finished_before(graph) == {job.name for job in graph}
    students[1].done_marker.unlink()  # e.g. a seed added to the spec after the report was made
    assert runner.finished_before(graph) == {job.name for job in graph} - {students[1].name, report.name}
