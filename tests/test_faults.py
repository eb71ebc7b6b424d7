"""Crash safety: every stage killed (kill -9) at seeded moments, including before the first checkpoint and
inside a checkpoint write, then run again; SIGTERM; two runs on one logdir; a full disk (a real tmpfs). Real
scripts as subprocesses, tiny `debug` configs, one thread.

After each rerun: it completes; each step is logged once; the episodes on disk are exactly those the final
checkpoint counts; no temp file is left; every checkpoint loads with weights_only=True; no process of the
killed run is left.
"""
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import replay

pytestmark = pytest.mark.slow  # kill tests: real processes killed and rerun
ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = ["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--device", "cpu", "--progress", "False",
          "--threads", "1"]
STUDENT = [*COMMON, "--task", "metaworld_reach", "--steps", "160", "--time_limit", "40", "--eval_every", "80",
           "--log_every", "20", "--checkpoint_every", "80"]
TEACHER = ["--pretrain_iterations", "8", "--log_every", "2", "--checkpoint_every", "4"]
TASKS = "metaworld_reach,metaworld_push"


# --- running and killing ----------------------------------------------------------------------------------

def spawn(script: str, args: list, log: pathlib.Path, fault: str | None = None) -> subprocess.Popen:
    """Start a stage script in its own process group (so its children can be found after it dies)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_KILL_IN_WRITE", None)
    if fault:
        env["COMET_KILL_IN_WRITE"] = fault
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(script: str, args: list, log: pathlib.Path, fault: str | None = None, timeout: float = 300) -> int:
    proc = spawn(script, args, log, fault)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def wait_for(proc: subprocess.Popen, ready, log: pathlib.Path, timeout: float = 240) -> None:
    """Poll until `ready()`; the process must still be running then."""
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"exited with {proc.returncode} before the kill point:\n{log.read_text()[-2000:]}"
        assert time.time() < end, f"kill point not reached in {timeout}s:\n{log.read_text()[-2000:]}"
        time.sleep(0.02)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def kill9(proc: subprocess.Popen) -> None:
    """kill -9 the stage's own process only (its children must not outlive it)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    end = time.time() + 10
    while group_members(proc.pid) and time.time() < end:
        time.sleep(0.1)
    assert not group_members(proc.pid), f"processes of the killed run left: {group_members(proc.pid)}"


def rows(logdir: pathlib.Path) -> list[dict]:
    path = logdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def count_rows(logdir: pathlib.Path, key: str, since: float = 0.0) -> int:
    """Rows holding `key` (written at or after time `since`)."""
    try:
        return sum(key in r and r["time"] >= since for r in rows(logdir))
    except json.JSONDecodeError:  # a line being written
        return 0


# --- the invariants ---------------------------------------------------------------------------------------

def check_run(logdir: pathlib.Path, row_keys: tuple) -> None:
    temp = [p for p in logdir.rglob("*") if p.name.endswith(".tmp")]
    assert not temp, f"temp files left: {temp}"
    for path in logdir.glob("*.pt"):
        assert isinstance(torch.load(path, weights_only=True), dict), path
    for key in row_keys:
        steps = [r["step"] for r in rows(logdir) if key in r]
        assert steps and steps == sorted(set(steps)), (key, steps)  # each step once, in order
    assert not (logdir / ".lock").exists()


def check_student(logdir: pathlib.Path) -> None:
    check_run(logdir, ("train/updates", "eval/episodes"))
    final = torch.load(logdir / "latest.pt", weights_only=True)
    assert final["step"] == 160
    assert len(replay.episode_files(logdir / "train_eps")) == final["episodes"] == 160 // 40
    assert len(replay.episode_files(logdir / "eval_eps")) == final["eval_episodes"] == 2  # evals at 80, 160
    assert [r["step"] for r in rows(logdir) if "eval/episodes" in r] == [80, 160]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    log = root / "collect.log"
    code = finish("collect_data.py", ["--tasks", TASKS, "--episodes", "2", "--obs", "state", "--workers", "1",
                                      "--out", root / "data", *COMMON], log)
    assert code == 0, log.read_text()[-2000:]
    return root, f"{root / 'data' / 'reach'},{root / 'data' / 'push'}"


@pytest.fixture(scope="module")
def teacher_run(sources):
    """An uninterrupted teacher: the reference every resumed one must equal exactly."""
    root, dirs = sources
    logdir = root / "teacher_ref"
    code = finish("dreamer_pretrain.py", [*COMMON, "--source_tasks", TASKS, "--source_task_dirs", dirs, *TEACHER,
                                          "--logdir", logdir], root / "teacher_ref.log")
    assert code == 0, (root / "teacher_ref.log").read_text()[-2000:]
    return logdir


# --- teacher --------------------------------------------------------------------------------------------

@pytest.mark.timeout_hint(90)
# Kill moments, one of each type per stage: inside a checkpoint write (teacher: the first latest.pt; distilling
# student: the second), at a seeded random logged window (teacher) or episode (collection), before the first
# checkpoint (student, with a stuck env worker; and in the lock test below).
@pytest.mark.parametrize("moment", ["first_checkpoint_write", "random"])
def test_pretrain_killed_then_rerun(sources, teacher_run, tmp_path, moment):
    root, dirs = sources
    logdir, log = tmp_path / "teacher", tmp_path / "teacher.log"
    args = [*COMMON, "--source_tasks", TASKS, "--source_task_dirs", dirs, *TEACHER, "--logdir", logdir]
    fault = "latest.pt:1" if moment == "first_checkpoint_write" else None
    if fault:
        assert finish("dreamer_pretrain.py", args, log, fault) == -signal.SIGKILL
        assert list(logdir.glob(".*.tmp")), "the kill did not happen inside a write"
    else:
        k = int(np.random.default_rng(0).integers(1, 4))  # seeded: killed after the k-th logged window
        proc = spawn("dreamer_pretrain.py", args, log)
        wait_for(proc, lambda: count_rows(logdir, "train/model_loss") >= k, log)
        kill9(proc)
    assert finish("dreamer_pretrain.py", args, log) == 0, log.read_text()[-2000:]
    check_run(logdir, ("train/model_loss",))
    resumed = torch.load(logdir / "teacher.pt", weights_only=True)["model"]
    reference = torch.load(teacher_run / "teacher.pt", weights_only=True)["model"]
    for name, value in reference.items():  # the resumed teacher is bit-identical to the uninterrupted one
        assert torch.equal(resumed[name], value), name


# --- student ----------------------------------------------------------------------------------------------

@pytest.mark.timeout_hint(60)
def test_student_killed_before_its_first_checkpoint_with_a_stuck_env_worker_then_rerun(tmp_path):
    logdir, log = tmp_path / "student", tmp_path / "student.log"
    args = [*STUDENT, "--envs", "2", "--logdir", logdir]
    k = int(np.random.default_rng(1).integers(2, 4))
    proc = spawn("dreamer_distill.py", [*args, "--checkpoint_every", "1000"], log)
    wait_for(proc, lambda: count_rows(logdir, "train/updates") >= k, log)
    workers = [pid for pid in group_members(proc.pid) if pid != proc.pid and parent_of(pid) == proc.pid
               and "spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 2, workers  # the two training envs (the eval env is in-process)
    os.kill(workers[0], signal.SIGSTOP)  # stuck: it will never read the pipe its dead parent closes
    kill9(proc)  # asserts that every env worker (the stopped one too) and the resource tracker are gone
    assert not (logdir / "latest.pt").exists()
    # The rerun with one env (a changed --envs only draws a warning) spares two more worker start-ups.
    assert finish("dreamer_distill.py", [*STUDENT, "--logdir", logdir], log) == 0, log.read_text()[-2000:]
    check_student(logdir)


def parent_of(pid: int) -> int:
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.timeout_hint(90)
def test_distilling_student_killed_in_its_second_checkpoint_write_then_rerun(sources, teacher_run, tmp_path):
    logdir, log = tmp_path / "comet", tmp_path / "comet.log"
    args = [*STUDENT, "--use_distill", "True", "--teacher_model_path", teacher_run / "teacher.pt",
            "--prune_every", "3", "--min_active_tasks", "1", "--logdir", logdir]
    assert finish("dreamer_distill.py", args, log, "latest.pt:2") == -signal.SIGKILL
    assert torch.load(logdir / "latest.pt", weights_only=True)["step"] == 80
    assert finish("dreamer_distill.py", args, log) == 0, log.read_text()[-2000:]
    check_student(logdir)
    prunes = [r for r in rows(logdir) if r.get("event") == "prune"]
    assert len(prunes) == 1, prunes  # the prune event is logged once


# --- collection -------------------------------------------------------------------------------------------

@pytest.mark.timeout_hint(120)
def test_collect_killed_leaves_no_workers_and_resumes(tmp_path):
    out, log = tmp_path / "data", tmp_path / "collect.log"
    args = ["--tasks", "metaworld_reach", "--episodes", "4", "--obs", "state", "--workers", "2", "--out", out,
            "--time_limit", "40", *COMMON]
    k = int(np.random.default_rng(3).integers(1, 3))
    proc = spawn("collect_data.py", args, log)
    wait_for(proc, lambda: len(list((out / "reach").glob("episode-*.npz"))) >= k if (out / "reach").is_dir()
             else False, log)
    kill9(proc)  # asserts that the pool workers and the resource tracker died with it
    assert finish("collect_data.py", args, log) == 0, log.read_text()[-2000:]
    manifest = json.loads((out / "reach" / "manifest.json").read_text())
    assert manifest["episodes"] == 4 and len(replay.load_dir(out / "reach")) == 4
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# --- the lock and SIGTERM ----------------------------------------------------------------------------------

@pytest.mark.timeout_hint(120)
def test_a_locked_logdir_is_refused_a_stale_lock_taken_over_and_sigterm_saves_like_ctrl_c(tmp_path):
    logdir, log = tmp_path / "student", tmp_path / "student.log"
    args = [*STUDENT, "--logdir", logdir, "--checkpoint_every", "1000"]  # no periodic checkpoint before the end
    long_run = [*args, "--steps", "100000"]  # still running when the second run starts, killed before a checkpoint
    first = spawn("dreamer_distill.py", long_run, log)
    wait_for(first, lambda: (logdir / ".lock").is_file() and count_rows(logdir, "train/updates") >= 1, log)
    second = subprocess.run([sys.executable, "dreamer_distill.py", *map(str, long_run)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # a start-up on a loaded machine
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1 and f"PID {first.pid}" in lines[0], second.stderr
    kill9(first)  # leaves a stale lock behind
    assert (logdir / ".lock").read_text().split()[0] == str(first.pid) and not (logdir / "latest.pt").exists()
    started = time.time()
    third = spawn("dreamer_distill.py", args, log)  # takes the stale lock over
    wait_for(third, lambda: count_rows(logdir, "train/updates", since=started) >= 2, log)  # its own rows
    third.send_signal(signal.SIGTERM)
    assert third.wait(60) == 130, log.read_text()[-2000:]
    saved = torch.load(logdir / "latest.pt", weights_only=True)
    assert 40 <= saved["step"] < 160  # saved at the moment of the signal, not at a periodic checkpoint
    assert "interrupted: checkpoint saved" in log.read_text()
    assert finish("dreamer_distill.py", [*STUDENT, "--logdir", logdir], log) == 0, log.read_text()[-2000:]
    # A signal mid-episode saves the step reached; the unfinished episode is not saved (it has no end), so
    # the episode count can be one short of steps / episode length, but disk and checkpoint must agree.
    check_run(logdir, ("train/updates", "eval/episodes"))
    final = torch.load(logdir / "latest.pt", weights_only=True)
    assert final["step"] == 160
    assert len(replay.episode_files(logdir / "train_eps")) == final["episodes"] in (160 // 40 - 1, 160 // 40)


def test_the_lock_is_an_os_lock_so_a_reused_pid_never_blocks_and_a_killed_holder_releases_it(tmp_path):
    """The logdir lock against real processes: a lock file naming a live process that holds no lock (a dead run's
    PID reused) is taken over; a live holder is refused by name; kill -9 of the holder frees the folder at once."""
    from tools import UsageError
    from training import run_state

    logdir = tmp_path / "run"
    logdir.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    holder = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; from training import run_state; "
                               "run_state.take(pathlib.Path(sys.argv[1])); print('held', flush=True); time.sleep(120)",
                               str(logdir / ".lock")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        (logdir / ".lock").write_text(f"{bystander.pid} {os.uname().nodename}\n")  # alive, but holds nothing
        run = run_state.RunDir(logdir, resume=True)
        assert run.open() is None and (logdir / ".lock").read_text().split()[0] == str(os.getpid())
        run.close()
        assert not (logdir / ".lock").exists()

        assert holder.stdout.readline().strip() == "held"
        assert run_state.holder(logdir) == f"PID {holder.pid} on {os.uname().nodename}"
        with pytest.raises(UsageError, match=rf"in use by another run \(PID {holder.pid} on "):
            run_state.RunDir(logdir, resume=True).open()
        holder.kill()
        holder.wait(30)
        assert (logdir / ".lock").read_text().split()[0] == str(holder.pid)  # its file stays behind, unheld
        run = run_state.RunDir(logdir, resume=True)
        assert run.open() is None
        run.close()
    finally:
        for process in (bystander, holder):
            process.kill()
            process.wait()


# --- a full disk ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
    """A real, tiny file system at `path` (needs root, as CI and this machine have)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield lambda new_size: subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout_hint(60)
@pytest.mark.parametrize("where", ["episode", "checkpoint"])
def test_a_full_disk_is_one_line_and_a_rerun_with_space_completes(tmp_path, capsys, where):
    """An episode file (train_eps/ on an 8 KiB file system: two tiny episodes fit) or the first checkpoint (the
    logdir on 120 KiB: configs, metrics and episodes fit, latest.pt does not) hits a real ENOSPC. In-process:
    the scripts' own entry point, without a second interpreter's start-up."""
    import dreamer_distill

    logdir = tmp_path / "student"
    args = [*map(str, STUDENT), "--logdir", str(logdir)]
    mounted, size, names = ((logdir / "train_eps", "8k", "train_eps") if where == "episode" else
                            (logdir, "120k", "latest.pt"))
    with tmpfs(mounted, size) as resize:
        capsys.readouterr()
        assert dreamer_distill.main(args) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0] and names in lines[0], lines
        assert str(logdir) in lines[0] and "run the same command again" in lines[0], lines
        assert not (logdir / ".lock").exists() and not [p for p in logdir.rglob("*") if p.name.endswith(".tmp")]
        if where == "checkpoint":
            return
        # What was saved before is intact (the checkpoint at 80 and its two episodes); with space, the same
        # command continues from there to the end.
        assert torch.load(logdir / "latest.pt", weights_only=True)["step"] == 80
        assert len(replay.load_dir(logdir / "train_eps")) == 2
        resize("4m")
        assert dreamer_distill.main(args) == 0, capsys.readouterr().err[-3000:]
        check_student(logdir)
