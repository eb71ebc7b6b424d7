"""sweep.py on a real two-node Ray cluster on this host, started with `ray start` as docs/sweeps.md ("On a cluster")
says, token authentication on. Only a private port and temp folder differ from the recipe, so that no other Ray on the
machine is touched. Also the local sweep's isolation from that cluster and from a dead one named by Ray's temp folder.

The cluster's processes carry a mark in their environment; the fixture stops exactly those."""
from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from test_sweep import LONG, end_session, last_step, saved_step, stage_pids, wait_for, write_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
RAY = str(pathlib.Path(sys.executable).with_name("ray"))
MARK = "COMET_TEST_CLUSTER"
pytestmark = pytest.mark.slow


def marked(mark: str) -> list[int]:
    needle = f"{MARK}={mark}".encode()
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def started(log: pathlib.Path, process: subprocess.Popen, timeout: float = 240, also: str = "") -> str:
    """The log of a `ray start --block` once its node runs (and, with `also`, once that line is written too:
    the head prints its address a few lines after "Ray runtime started", so a busy machine can read between)."""
    def ready():
        assert process.poll() is None, log.read_text()[-3000:]
        text = log.read_text() if log.exists() else ""
        return text if "Ray runtime started" in text and re.search(also, text) else None
    return wait_for(ready, timeout, f"ray start ({log.name})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node (1 CPU each), token authentication on: {address, env (for a driver: the token's
    path, no RAY_AUTH_MODE), token, mark, tmp, nodes}."""
    tmp = tmp_path_factory.mktemp("cluster")
    short = pathlib.Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))  # Ray's socket paths must stay short
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    mark = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    node_env = {**base, MARK: mark, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_worker_niceness": "0"}
    port = free_port()
    logs, processes = [tmp / "head.log", tmp / "node.log"], []
    try:
        with open(logs[0], "w") as out:
            processes.append(subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1",
                                               "--temp-dir", str(short / "ray"), "--include-dashboard", "false",
                                               "--block"], env=node_env, stdout=out, stderr=subprocess.STDOUT))
        pattern = r"ray start --address='([^']+)'"
        address = re.search(pattern, started(logs[0], processes[0], also=pattern)).group(1)
        with open(logs[1], "w") as out:
            processes.append(subprocess.Popen([RAY, "start", "--address", address, "--num-cpus", "1", "--block"],
                                              env=node_env, stdout=out, stderr=subprocess.STDOUT))
        started(logs[1], processes[1])
        driver_env = {k: v for k, v in node_env.items() if k != "RAY_AUTH_MODE"}
        yield {"address": address, "env": driver_env, "token": token, "mark": mark, "tmp": tmp,
               "nodes": processes}
    finally:
        for process in processes:
            process.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        deadline = time.time() + 30
        while marked(mark) and time.time() < deadline:
            time.sleep(1)
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(short, ignore_errors=True)


def driver(spec: pathlib.Path, flags: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "sweep.py", str(spec), *flags], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def one_line(spec: pathlib.Path, flags: list[str], env: dict) -> tuple[int, str, float]:
    start = time.time()
    done = subprocess.run([sys.executable, "sweep.py", str(spec), *flags], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)
    return done.returncode, (done.stdout + done.stderr).strip(), time.time() - start


def nodes_of(log: pathlib.Path) -> list[str]:
    return re.findall(r"^=== attempt \d+ of \d+ on (node [0-9a-f]+)", log.read_text(), re.M)


def test_a_cluster_that_is_not_there_or_refuses_the_token_is_one_line_within_seconds(cluster, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tmp_path / "sweep", {"dreamer": {"flags": {"use_distill": False}}},
                      teachers=False)
    env = cluster["env"]
    dead = f"127.0.0.1:{free_port()}"
    raytmp = pathlib.Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (raytmp / "ray").mkdir()
    (raytmp / "ray" / "ray_current_cluster").write_text(dead)  # what a stopped cluster leaves in Ray's temp folder
    home = tmp_path / "home"
    home.mkdir()
    cases = [  # (flags, env, words of the one line)
        (["--address", dead], env, ["no Ray cluster answers there", "Connection refused"]),
        (["--address", "auto"], {**env, "RAY_TMPDIR": str(raytmp)},
         [f":{dead.split(':')[1]}, which RAY_ADDRESS or Ray's temp folder names", "no Ray cluster answers"]),
        (["--address", cluster["address"]], {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
         ["requires token authentication", "RAY_AUTH_TOKEN is not the cluster's", "ray get-auth-token"]),
        (["--address", cluster["address"]],
         {**{k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}, "HOME": str(home)},
         ["requires token authentication", "this machine has no Ray token", "RAY_AUTH_MODE=token"]),
    ]
    try:
        for flags, case_env, words in cases:
            code, out, seconds = one_line(spec, flags, case_env)
            assert code == 2 and out.count("\n") == 0 and out.startswith("sweep.py: error: --address"), (flags, out)
            assert all(word in out for word in words), (flags, words, out)
            assert seconds < 60, (flags, seconds)  # Ray alone retries for 20 s to minutes, then a traceback
    finally:
        shutil.rmtree(raytmp, ignore_errors=True)
    assert not (tmp_path / "sweep" / "students").exists()  # no job ran


def test_a_stopped_driver_lets_the_jobs_on_both_nodes_save(cluster, tmp_path):
    """Token authentication handled (the driver's shell has the token's path, not RAY_AUTH_MODE); a job on each
    node; Ctrl-C of the driver: each job saves the step it reached, on either node."""
    root = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", root, {"dreamer": {"flags": {"use_distill": False}}}, teachers=False,
                      student=LONG)
    runs = [root / f"students/drawer_close/dreamer/seed{seed}" for seed in (0, 1)]
    process = driver(spec, ["--address", cluster["address"]], cluster["env"])
    try:
        wait_for(lambda: all(last_step(run) >= 100 for run in runs), 400, "both students past env step 100")
        reached = [last_step(run) for run in runs]
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=300)
        wait_for(lambda: not any(stage_pids(run) for run in runs), 120, "the students to exit")
    finally:
        end_session(process)
    assert process.returncode == 130, out
    assert f"the cluster at {cluster['address']} requires token authentication: using the token" in out, out
    assert len({nodes_of(run.parent / f"{run.name}.log")[0] for run in runs}) == 2, "one job on each node"
    for run, step in zip(runs, reached):
        saved = saved_step(run)
        assert saved is not None and saved >= step, (run.name, saved, step, out)


def test_a_lost_node_is_retried_on_the_other_with_attempts_that_add_up(cluster, tmp_path):
    """The second node's raylet is killed (kill -9) while a job runs there: that job saves what it reached, the
    sweep runs it again on the head once the head is free, and the log, the done marker and the summary give the
    same two attempts with their nodes; Ray's own reports stay out of the driver's output."""
    root = tmp_path / "sweep"
    student = {**LONG, "steps": 1200}
    spec = write_spec(tmp_path / "spec.yaml", root, {"dreamer": {"flags": {"use_distill": False}}}, teachers=False,
                      student=student)
    runs = [root / f"students/drawer_close/dreamer/seed{seed}" for seed in (0, 1)]
    logs = [run.parent / f"{run.name}.log" for run in runs]
    process = driver(spec, ["--address", cluster["address"]], cluster["env"])
    try:
        wait_for(lambda: all(last_step(run) >= 100 for run in runs), 400, "both students past env step 100")
        raylet = next(pid for pid in marked(cluster["mark"]) if pathlib.Path(f"/proc/{pid}/stat").read_text()
                      .rsplit(")", 1)[1].split()[1] == str(cluster["nodes"][1].pid)
                      and "raylet" in pathlib.Path(f"/proc/{pid}/comm").read_text())
        reached = [last_step(run) for run in runs]
        os.kill(raylet, signal.SIGKILL)
        out, _ = process.communicate(timeout=900)
    finally:
        end_session(process)
    assert process.returncode == 0, out
    lost = [i for i, log in enumerate(logs) if len(nodes_of(log)) == 2]
    assert len(lost) == 1, (lost, out)  # the job on the second node; the head's ran once
    run, log = runs[lost[0]], logs[lost[0]]
    first, second = nodes_of(log)
    assert first != second, (first, second)
    saved_at = int(re.search(r"interrupted: checkpoint saved at env step (\d+)", log.read_text()).group(1))
    assert saved_at >= reached[lost[0]], (saved_at, reached)  # it saved what it had reached when its node went
    done = json.loads(run.with_name(f"{run.name}.done").read_text())
    assert done["attempts"] == 2 and [a["node"].split(" (")[0] for a in done["history"]] == [first, second], done
    assert done["history"][0]["outcome"].startswith("lost with its worker or node")
    assert f"lost students/drawer_close/dreamer/{run.name}: attempt 1 of 3 on {first}" in out, out
    assert (f"retried: students/drawer_close/dreamer/{run.name}: 2 attempts (1 on {first}" in out
            and f"2 on {second}" in out), out
    assert "[state-dump]" not in out and "\x1b[" not in out, out  # Ray's raylet reports went to ray.log
    assert "lost students/drawer_close/dreamer" in (root / "sweep.log").read_text()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval/success_any" in line]
    assert steps and steps[-1] == student["steps"], steps


def test_a_local_sweep_never_touches_another_ray(cluster, tmp_path):
    """RAY_ADDRESS names the running cluster and Ray's temp folder a dead one: `--num_cpus` once made the driver
    fail with a traceback, without it the jobs ran on that cluster, and the dead address hung it. A local sweep
    starts its own Ray regardless."""
    root = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", root, {"dreamer": {"flags": {"use_distill": False}}}, teachers=False)
    raytmp = pathlib.Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (raytmp / "ray").mkdir()
    (raytmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {**cluster["env"], "RAY_ADDRESS": cluster["address"], "RAY_TMPDIR": str(raytmp)}
    probe = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address='" + cluster["address"] +
                            "', log_to_driver=False); print(json.dumps([n['NodeID'][:8] for n in ray.nodes()]))"],
                           env={**cluster["env"], "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                           timeout=120)
    cluster_nodes = {f"node {n}" for n in json.loads(probe.stdout.strip().splitlines()[-1])}
    process = driver(spec, ["--num_cpus", "2"], env)
    try:
        out, _ = process.communicate(timeout=600)
    finally:
        end_session(process)
        shutil.rmtree(raytmp, ignore_errors=True)
    assert process.returncode == 0, out
    for seed in (0, 1):
        nodes = nodes_of(root / f"students/drawer_close/dreamer/seed{seed}.log")
        assert nodes and not set(nodes) & cluster_nodes, (nodes, cluster_nodes)
