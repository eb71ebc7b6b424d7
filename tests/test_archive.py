"""sweep.py --archive: what a finished job leaves in the archive, what a sweep elsewhere restores or runs again,
and a real tiny sweep continued from its archive alone on a fresh sweep folder."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import tools
from sweeps import archive as archives, jobs as job_graph, runner, spec as sweep_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDENT = {"steps": 160, "eval_every": 80, "checkpoint_every": 80, "log_every": 80}


def write_spec(path: pathlib.Path, root: pathlib.Path, seeds: list[int], ood: bool = False,
               teachers: tuple[str, ...] = ("moe",)) -> pathlib.Path:
    from ruamel.yaml import YAML

    spec = {"root": str(root), "resources": {"num_cpus": 1}, "ood": ood,
            "flags": {"configs": ["defaults", "metaworld", "quickstart", "debug"], "progress": False},
            "collect": {"tasks": ["metaworld_reach", "metaworld_door_open"],
                        "flags": {"episodes": 2, "obs": "state", "time_limit": 40}},
            "teachers": {name: {"flags": {"pretrain_iterations": 3}} for name in teachers},
            "students": {"targets": ["metaworld_drawer_close"], "seeds": seeds, "flags": STUDENT,
                         "methods": {"dreamer": {"flags": {"use_distill": False}},
                                     "comet": {"teacher": teachers[0], "flags": {"use_distill": True}}}},
            "report": {"reps": 200, "last": 1}}
    with open(path, "w") as f:
        YAML().dump(spec, f)
    return path


def graph(spec: pathlib.Path) -> dict[str, job_graph.Job]:
    return {job.name: job for job in job_graph.build(sweep_spec.load(spec, ROOT))}


def finish(job: job_graph.Job) -> None:
    """What a finished job leaves in its logdir, small and large files alike, and its done marker."""
    job.logdir.mkdir(parents=True, exist_ok=True)
    kind = archives.kind(job)
    if kind == "data":
        for task in ("reach", "door_open"):
            (job.logdir / task).mkdir()
            (job.logdir / task / "manifest.json").write_text(json.dumps({"task": task}))
            (job.logdir / task / "ep0.npz").write_bytes(b"episode")
    if kind in ("teachers", "students"):
        (job.logdir / "config.yaml").write_text(f"job: {job.name}\n")
        rows = [{"step": 80, "eval/success_any": 0.5}, {"step": 160, "eval/success_any": 1.0}]
        (job.logdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (job.logdir / "latest.pt").write_bytes(b"checkpoint")
        (job.logdir / "events.out.tfevents.1").write_bytes(b"tb")
    if kind == "teachers":
        tools.save_checkpoint(job.logdir / "teacher.pt", {"kind": "teacher", "model": {"w": torch.ones(3)},
                                                           "optimizer": {"state": {"m": torch.zeros(3)}}})
    if kind == "students":
        (job.logdir / "train_eps").mkdir()
        (job.logdir / "train_eps" / "ep0.npz").write_bytes(b"episode")
    if kind == "ood":
        (job.logdir / "ood_report.json").write_text("{}")
        (job.logdir / "ood_embeddings.npz").write_bytes(b"big")
    job.done_marker.write_text(json.dumps({"command": job.command, "seconds": 1.0}))


def test_a_finished_job_leaves_only_its_small_outputs_once(tmp_path):
    jobs = graph(write_spec(tmp_path / "spec.yaml", tmp_path / "sweep", [0], ood=True))
    store = archives.Archive(tmp_path / "archive", tmp_path / "sweep")
    for job in jobs.values():
        finish(job)
    assert sorted(store.store_finished(list(jobs.values()))) == sorted(n for n in jobs if n != "report")
    files = sorted(str(p.relative_to(store.path)) for p in store.path.rglob("*") if p.is_file())
    student = "students/drawer_close/comet/seed0"
    assert files == sorted([
        "data.done", "data/summary.json", "data/reach/manifest.json", "data/door_open/manifest.json",
        "teachers/moe.done", "teachers/moe/summary.json", "teachers/moe/config.yaml", "teachers/moe/metrics.jsonl",
        "teachers/moe/teacher.pt", *[f"students/drawer_close/{m}/seed0{f}" for m in ("comet", "dreamer") for f in
                                     (".done", "/summary.json", "/config.yaml", "/metrics.jsonl")],
        "ood/drawer_close/comet/seed0.done", "ood/drawer_close/comet/seed0/summary.json",
        "ood/drawer_close/comet/seed0/ood_report.json"]), files
    teacher = tools.load_checkpoint(store.path / "teachers/moe/teacher.pt")
    assert teacher["optimizer"] is None and torch.equal(teacher["model"]["w"], torch.ones(3))
    summary = json.loads((store.path / student / "summary.json").read_text())
    assert summary["last_eval"] == {"step": 160, "success_any": 1.0}
    assert summary["files"]["metrics.jsonl"]["bytes"] == (jobs[student].logdir / "metrics.jsonl").stat().st_size
    # an entry is never overwritten: a second run of the job here changes nothing in the archive
    (jobs[student].logdir / "metrics.jsonl").write_text("changed\n")
    assert store.store(jobs[student]) is False and "changed" not in (store.path / student / "metrics.jsonl").read_text()


def test_what_a_sweep_elsewhere_restores_and_runs_again(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", tmp_path / "sweep", [0], ood=True)
    store = archives.Archive(tmp_path / "archive", tmp_path / "sweep")
    for job in graph(spec).values():
        finish(job)
        store.store(job)
    shutil.rmtree(tmp_path / "sweep")  # another machine: the archive only

    # seed 1 added: its students run from the restored teacher; seed 0's OOD stays archived, seed 1's needs data
    jobs = graph(write_spec(spec, tmp_path / "sweep", [0, 1], ood=True))
    restore, left_out = store.plan(list(jobs.values()), set())
    assert restore == {"teachers/moe", "ood/drawer_close/comet/seed0",
                       *[f"students/drawer_close/{m}/seed0" for m in ("comet", "dreamer")]}, restore
    assert left_out == set()

    # without OOD nothing pending reads the source episodes: the data job is restored too
    jobs = graph(write_spec(spec, tmp_path / "sweep", [0, 1]))
    restore, _ = store.plan(list(jobs.values()), set())
    assert "data" in restore and "teachers/moe" in restore
    # a new teacher needs the episodes: the data job runs again
    jobs = graph(write_spec(spec, tmp_path / "sweep", [0, 1], teachers=("moe", "other")))
    assert "data" not in store.plan(list(jobs.values()), set())[0]

    # an OOD job added after its student was archived cannot run here: left out, with one line
    shutil.rmtree(store.path / "ood")
    (store.path / "ood/drawer_close/comet/seed0.done").unlink(missing_ok=True)
    jobs = graph(write_spec(spec, tmp_path / "sweep", [0], ood=True))
    said = []
    kept = archives.prepare(store, list(jobs.values()), runner.finished_before(list(jobs.values())), said.append)
    assert "ood/drawer_close/comet/seed0" not in {j.name for j in kept}
    assert any(line.startswith("left out ood/drawer_close/comet/seed0") for line in said), said
    restored = jobs["teachers/moe"].logdir
    assert (restored / "teacher.pt").is_file() and jobs["teachers/moe"].done_marker.is_file()
    assert not (restored / "latest.pt").exists()


def sweep(spec: pathlib.Path, archive: pathlib.Path) -> str:
    done = subprocess.run([sys.executable, "sweep.py", str(spec), "--num_cpus", "2", "--archive", str(archive)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout_hint(300)
def test_a_sweep_continues_from_its_archive_on_a_fresh_folder_and_reports_from_it_alone(tmp_path):
    import results

    archive = tmp_path / "archive"
    spec = write_spec(tmp_path / "spec.yaml", tmp_path / "sweep", [0])
    sweep(spec, archive)
    assert (archive / "teachers/moe/teacher.pt").is_file() and not list(archive.rglob("latest.pt"))
    assert not list(archive.rglob("*.npz")) and (archive / "students/drawer_close/comet/seed0.done").is_file()

    shutil.rmtree(tmp_path / "sweep")  # a fresh machine: only the archive (and the code) are there
    out = sweep(write_spec(spec, tmp_path / "sweep", [0, 1]), archive)
    assert "4 job(s) restored from the archive" in out, out  # data, teacher, the two seed-0 students
    for name in ("data", "teachers/moe", "students/drawer_close/comet/seed0", "students/drawer_close/dreamer/seed0"):
        assert f"started {name}\n" not in out, out
    for method in ("comet", "dreamer"):  # comet seed 1 distils from the teacher the archive shipped
        assert f"done students/drawer_close/{method}/seed1" in out, out
        assert (archive / f"students/drawer_close/{method}/seed1.done").is_file()
    assert "| drawer_close | comet | 2 |" in (tmp_path / "sweep/report/results.md").read_text()

    assert results.main([str(archive / "students"), "--out", str(tmp_path / "report"), "--last", "1",
                         "--reps", "200"]) == 0
    data = json.loads((tmp_path / "report/results.json").read_text())
    assert data["protocol"]["seeds"] == {"comet": [0, 1], "dreamer": [0, 1]}
    assert {r["pairs"] for r in data["paired"]} == {2}
