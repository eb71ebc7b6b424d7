"""Run the whole COMET pipeline as a small sweep on a local Ray, and end with a results table and curves.

collect 3 source tasks -> pretrain a teacher -> COMET and plain Dreamer students on a target task the teacher
never saw, a few seeds each -> OOD detection per COMET student -> results.md, curves.png. The sweep is
sweeps/specs/quickstart.yaml with this command's flags filled in, run by sweep.py's runner: every job is a stage
script's command line, finished jobs are skipped when the command is run again, interrupted ones resume.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
SPEC = ROOT / "sweeps" / "specs" / "quickstart.yaml"

# Changes to the spec per scale. "test" (the test suite): a few updates and a few hundred env steps per job.
SCALES = {
    "default": {},
    "test": {"flags": {"configs": ["defaults", "metaworld", "quickstart", "debug"], "time_limit": 40},
             "collect": {"flags": {"episodes": 3, "time_limit": 40}},
             "teachers": {"moe": {"flags": {"pretrain_iterations": 3}}},
             "students": {"flags": {"steps": 160, "prefill": 40, "eval_every": 80, "log_every": 80,
                                    "checkpoint_every": 80, "eval_episodes": 1}},
             "report": {"reps": 200, "last": 1}},
}


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied key by key; nested mappings are merged, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def seeds_from(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise tools.UsageError(f"--seeds takes seeds >= 0 separated by commas (e.g. 0,1,2), got '{text}'")
    return seeds


def student_steps(steps: int, flags: dict) -> dict:
    """Student flags for `steps` env steps: three evaluations, the prefill at most a fifth of the run."""
    if steps < 10:
        raise tools.UsageError(f"--steps must be at least 10 env steps, got {steps}")
    every = max(steps // 3, 1)
    return {"steps": steps, "eval_every": every, "log_every": every, "checkpoint_every": every, "probe_every": every,
            "prefill": min(int(flags.get("prefill", steps)), steps // 5)}


def build_spec(args) -> dict:
    """The quick start's sweep spec: the committed one, the scale's changes, then this command's flags."""
    from ruamel.yaml import YAML

    spec = merge(YAML(typ="safe", pure=True).load(SPEC.read_text()), SCALES[args.scale])
    changes = {"root": str((ROOT / args.root).resolve()), "resources": {"num_cpus": args.threads},
               "flags": {"device": args.device}, "students": {"seeds": seeds_from(args.seeds)}}
    if args.steps is not None:
        changes["students"]["flags"] = student_steps(args.steps, spec["students"]["flags"])
    return merge(spec, changes)


def write_spec(spec: dict) -> pathlib.Path:
    from ruamel.yaml import YAML

    path = pathlib.Path(spec["root"]) / "quickstart_sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# written by the quick start (comet-quickstart) from {SPEC.relative_to(ROOT)}; run it with sweep.py to continue\n")
        YAML().dump(spec, f)
    return path


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", default="runs/quickstart", help="folder for data, runs and the report")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds, per method (comma-separated)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per student (default: the spec's 1500)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per job = CPUs each job holds (1: two jobs side by side on 2 cores)")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (training jobs packed per GPU by memory: sweeps/gpu_share.py)")
    parser.add_argument("--dry_run", action="store_true", help="print every job's command line and exit")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    from analysis.report import tables
    from sweeps.driver import drive

    spec = build_spec(args)
    root = pathlib.Path(spec["root"])
    path = write_spec(spec)
    drive(str(path), num_cpus=args.num_cpus, dry_run=args.dry_run)
    if args.dry_run:
        return
    report = root / "report"
    print(f"\n{tables(report / 'results.md')}\n")
    print(f"[quickstart] results:     {report / 'results.md'} (+ results.json, results.csv)")
    print(f"[quickstart] curves:      {report / 'curves.png'} (IQM curves: iqm_curves.png)")
    print(f"[quickstart] OOD reports: {root / 'ood'}/<target>/comet/seed<k>/")
    print(f"[quickstart] TensorBoard: .venv/bin/tensorboard --logdir {root}")
    print(f"[quickstart] continue or extend it: python sweep.py {path}")


def main(argv=None) -> int:
    """Exit 0: pipeline and report done; 1: a job failed (listed with its log); 2: bad flags; 130: interrupted."""
    return tools.run_main("comet-quickstart", run, argv)


if __name__ == "__main__":
    sys.exit(main())
