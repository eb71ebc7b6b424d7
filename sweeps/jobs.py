"""The job graph of a sweep: every job is one stage-script command line with its own logdir.

Layout under the sweep root (each logdir has `<logdir>.log` and, once it finished, `<logdir>.done` beside it):
  data/                                  collect_data.py (one folder per source task)
  teachers/<name>/                       dreamer_pretrain.py
  students/<target>/<method>/seed<k>/    dreamer_distill.py
  ood/<target>/<method>/seed<k>/         ood_detection.py
  report/                                results.py
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys

from envs.tasks import short_name
from sweeps.spec import Spec


@dataclasses.dataclass
class Job:
    name: str                  # also the logdir relative to the sweep root
    command: list[str]
    logdir: pathlib.Path
    deps: list[str]
    num_cpus: float
    num_gpus: float
    after_settled: bool = False  # runs once its deps finished either way (the report), not only on success

    @property
    def log(self) -> pathlib.Path:
        return self.logdir.with_name(self.logdir.name + ".log")

    @property
    def done_marker(self) -> pathlib.Path:
        return self.logdir.with_name(self.logdir.name + ".done")


def arg_text(value) -> str:
    """A flag's value as its command-line word: a list comma-joined."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def as_args(flags: dict) -> list[str]:
    """`{key: value}` as `--key value`; lists are comma-joined except `configs`, which takes several words."""
    args = []
    for key, value in flags.items():
        if key == "configs":
            args += ["--configs", *([str(v) for v in value] if isinstance(value, list) else str(value).split())]
        else:
            args += [f"--{key}", arg_text(value)]
    return args


def for_stage(script: str, flags: dict) -> dict:
    """The shared `flags` that `script` reads. A key of another stage is left out (the stage would only warn
    that it has no effect); a key no stage knows stays, so a typo still fails with the stage's own error."""
    import configs

    known = configs.describe(configs.CONFIG_FILE)
    mine = set(configs.stage_keys(script, configs.CONFIG_FILE))
    return {k: v for k, v in flags.items() if k == "configs" or k not in known or k in mine}


def threads(num_cpus: float) -> str:
    return str(max(1, int(num_cpus)))


def num_gpus(spec: Spec, kind: str, *flags: dict) -> float:
    """The GPU share of a job of `kind` (teacher | student | ood) whose stage flags are `flags` merged: the spec's
    `num_gpus`, or with `auto` 1/N of a GPU for a job on CUDA (N by memory, sweeps/gpu_share.py), none on a CPU."""
    from sweeps import gpu_share

    value = spec.resources["num_gpus"]
    if value != "auto":
        return value
    device = {k: v for f in (spec.flags, *flags) for k, v in f.items()}.get("device", "cpu")
    return gpu_share.fraction(kind) if str(device).startswith("cuda") else 0


def build(spec: Spec, python: str = sys.executable) -> list[Job]:
    """All jobs of the sweep, each after the jobs it needs."""
    root, cpus = spec.root, spec.resources["num_cpus"]
    jobs: list[Job] = []

    def add(name: str, script: str, args: list[str], deps: list[str], gpus: float = 0, **kw) -> Job:
        job = Job(name, [python, script, *args], root / name, deps, cpus, gpus, **kw)
        jobs.append(job)
        return job

    data_dirs = [str(root / "data" / short_name(t)) for t in spec.source_tasks]
    if spec.source_tasks:
        # Data collection runs the scripted experts on the CPU only (as the report does: no GPU share).
        add("data", "collect_data.py", ["--tasks", ",".join(spec.source_tasks), "--out", str(root / "data"),
                                        "--workers", threads(cpus), *as_args(spec.collect_flags)], [])
    sources = ["--source_tasks", ",".join(spec.source_tasks), "--source_task_dirs", ",".join(data_dirs)]
    common = {script: as_args(for_stage(script, {**spec.flags, "threads": threads(cpus)}))
              for script in ("dreamer_pretrain.py", "dreamer_distill.py", "ood_detection.py")}
    for name, flags in spec.teachers.items():
        add(f"teachers/{name}", "dreamer_pretrain.py",
            [*common["dreamer_pretrain.py"], *sources, *as_args(flags), "--logdir", str(root / "teachers" / name)],
            ["data"], num_gpus(spec, "teacher", flags))
    students, distill, ood_args = [], common["dreamer_distill.py"], common["ood_detection.py"]
    # Seed-major order: a sweep stopped early holds whole seeds (every target x method), not whole methods.
    for index, seed in enumerate(spec.seeds):
        for target in spec.targets:
            for method in spec.methods:
                name = f"students/{short_name(target)}/{method.name}/seed{seed}"
                of = method.teacher_of(index, len(spec.seeds))
                teacher = [] if of is None else ["--teacher_model_path", str(root / "teachers" / of / "teacher.pt")]
                deps = [] if of is None else [f"teachers/{of}"]
                students.append(add(name, "dreamer_distill.py",
                                    [*distill, *sources, *as_args(spec.student_flags), *as_args(method.flags),
                                     *teacher, "--task", target, "--seed", str(seed), "--logdir", str(root / name)],
                                    deps, num_gpus(spec, "student", spec.student_flags, method.flags)))
                if spec.ood and method.teacher is not None:
                    ood = f"ood/{short_name(target)}/{method.name}/seed{seed}"
                    add(ood, "ood_detection.py",
                        [*ood_args, *sources, *teacher, "--ood_threads", threads(cpus),
                         "--source_dir", ",".join(data_dirs), "--student_dir", str(root / name / "train_eps"), "--out", str(root / ood)],
                        [name], num_gpus(spec, "ood"))
    add("report", "results.py", [str(root / "students"), "--out", str(root / "report"), *as_args(spec.report_flags)],
        [s.name for s in students], after_settled=True)
    return jobs
