"""Results that outlive a machine: each finished job's small outputs kept under a committed folder
(`sweep.py SPEC --archive docs/results/<name>`), and a sweep continued anywhere from them.

The archive has the sweep's own layout (`<archive>/<job name>/...`, `<archive>/<job name>.done`), so
`results.py <archive>/students` reports from it as from a sweep folder. What a job leaves there (KEEP):
  data       each task folder's manifest.json (settings, counts, per-episode figures; not the episodes)
  teachers   config.yaml, config_history.jsonl, metrics.jsonl, and teacher.pt without its optimizer state:
             the students' input ships with the archive, so a student started on any machine distils from
             the very teacher the archived students used (a teacher re-made elsewhere would not be bit-equal)
  students   config.yaml, config_history.jsonl, metrics.jsonl
  ood        ood_report.json, ood_episodes.csv
and, for every job, its done marker and summary.json (the files with their sizes and sha256, the host,
the command and, for a student, its last evaluation). Checkpoints (latest.pt), episodes, TensorBoard and
W&B files and logs are never archived; the report is made again from the archived runs.

Running a sweep with the archive (the rule, docs/evaluation.md "Results that outlive a machine"):
1. every job finished here but not yet archived is archived, and so is each job as it finishes;
   an entry, once complete (its done marker written last), is never overwritten;
2. an archived job counts as done: its archived files (with teacher.pt) are restored into the sweep folder
   and it does not run again, except
3. the data job is run again here when a job still to run reads the source episodes (which the archive does
   not keep): a teacher, an OOD job or a student's critic warm-up (collection is seeded);
4. an OOD job whose student is restored from the archive is left out here (its student's episodes exist only
   where the student ran): run it there.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import socket

import tools
from sweeps.jobs import Job

TEACHER_FILE = "teacher.pt"
SUMMARY = "summary.json"
KEEP = {
    "data": ("*/manifest.json",),
    "teachers": ("config.yaml", "config_history.jsonl", "metrics.jsonl", TEACHER_FILE),
    "students": ("config.yaml", "config_history.jsonl", "metrics.jsonl"),
    "ood": ("ood_report.json", "ood_episodes.csv"),
}


def kind(job: Job) -> str:
    return job.name.split("/")[0]


def reads_data(job: Job) -> bool:
    """Whether `job` reads the source episodes, which the archive does not keep: a teacher, OOD detection, and a
    student with a critic warm-up (`--critic_warmup` > 0, the only student that reads them)."""
    if kind(job) == "students":
        flag = "--critic_warmup"
        return flag in job.command and float(job.command[job.command.index(flag) + 1]) > 0
    return kind(job) in ("teachers", "ood")


class Archive:
    def __init__(self, path: str | pathlib.Path, root: pathlib.Path):
        self.path, self.root = pathlib.Path(path).resolve(), root

    def entry(self, job: Job) -> pathlib.Path:
        return self.path / job.name

    def marker(self, job: Job) -> pathlib.Path:
        return self.path / f"{job.name}.done"

    def has(self, job: Job) -> bool:
        return kind(job) in KEEP and self.marker(job).is_file()

    # --- storing ------------------------------------------------------------------------------------------

    def store(self, job: Job) -> bool:
        """Archive a finished job's small outputs (no-op for a report, an unfinished job or one archived before)."""
        if kind(job) not in KEEP or self.has(job) or not job.done_marker.is_file():
            return False
        files = {}
        for pattern in KEEP[kind(job)]:
            for source in sorted(job.logdir.glob(pattern)):
                relative = source.relative_to(job.logdir)
                target = self.entry(job) / relative
                if source.name == TEACHER_FILE:
                    _weights_only(source, target)
                else:
                    tools.atomic_write(target, lambda f, s=source: f.write(s.read_bytes()))
                files[str(relative)] = {"bytes": target.stat().st_size, "sha256": _sha256(target)}
        record = json.loads(job.done_marker.read_text() or "{}")
        summary = {"job": job.name, "archived_on": socket.gethostname(), "files": files, "done": record,
                   **_last_eval(job)}
        _write_json(self.entry(job) / SUMMARY, summary)
        _write_json(self.marker(job), record)  # last: an entry counts once it is complete
        return True

    def store_finished(self, jobs: list[Job]) -> list[str]:
        return [job.name for job in jobs if self.store(job)]

    # --- continuing elsewhere -----------------------------------------------------------------------------

    def plan(self, jobs: list[Job], done_here: set[str]) -> tuple[set[str], set[str]]:
        """(jobs to restore from the archive, OOD jobs to leave out here) under rules 2-4 of the module doc."""
        restore = {job.name for job in jobs if self.has(job) and job.name not in done_here}
        pending = [job for job in jobs if job.name not in done_here | restore]
        left_out = {job.name for job in pending if kind(job) == "ood" and any(d in restore for d in job.deps)}
        if any(reads_data(job) for job in pending if job.name not in left_out):
            restore.discard("data")
        return restore, left_out

    def restore(self, job: Job) -> None:
        """Copy an archived job's files and done marker into the sweep folder; they replace what a run of it left
        here (the archive is the record)."""
        for source in sorted(self.entry(job).rglob("*")):
            if source.is_file():
                target = job.logdir / source.relative_to(self.entry(job))
                tools.atomic_write(target, lambda f, s=source: f.write(s.read_bytes()))
        tools.atomic_write(job.done_marker, lambda f: f.write(self.marker(job).read_bytes()))


def _weights_only(source: pathlib.Path, target: pathlib.Path) -> None:
    payload = tools.load_checkpoint(source)
    tools.save_checkpoint(target, {**payload, "optimizer": None})


def _last_eval(job: Job) -> dict:
    metrics = job.logdir / "metrics.jsonl"
    if kind(job) != "students" or not metrics.is_file():
        return {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if '"eval/success_any"' in line]
    return {"last_eval": {"step": rows[-1]["step"], "success_any": rows[-1]["eval/success_any"]}} if rows else {}


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: pathlib.Path, value: dict) -> None:
    text = (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()
    tools.atomic_write(path, lambda f: f.write(text))


def prepare(archive: Archive, jobs: list[Job], done_here: set[str], say) -> list[Job]:
    """Archive what finished here, restore what the archive holds; returns the jobs left to this run."""
    stored = archive.store_finished(jobs)
    restore, left_out = archive.plan(jobs, done_here | set(stored))
    for job in jobs:
        if job.name in restore:
            archive.restore(job)
        elif job.after_settled and restore & set(job.deps):
            job.done_marker.unlink(missing_ok=True)  # a report made before these runs arrived is made again
    if stored:
        say(f"archived {len(stored)} finished job(s) to {archive.path}")
    if restore:
        say(f"{len(restore)} job(s) restored from the archive {archive.path}; not run again")
    for name in sorted(left_out):
        say(f"left out {name}: its student comes from the archive without its episodes; run it where the "
            f"student ran")
    return [job for job in jobs if job.name not in left_out]
