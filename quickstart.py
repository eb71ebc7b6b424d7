"""Run the whole COMET pipeline at a small built-in scale on a CPU.

collect 3 source tasks -> pretrain the teacher -> distilled and plain students on a target task -> OOD
detection. Each stage is one of the project's own scripts run as a subprocess, exactly as a user would type
it; finished stages are skipped when the command is run again, so an interrupted run picks up where it was.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent

# Sizes per scale: episodes per source task, extra config blocks, overrides for the training stages
# (each stage gets only the ones it reads).
SCALES = {
    "default": dict(episodes=12, blocks=["quickstart"], overrides={}),
    # Used by the test suite: a few updates and a few hundred env steps per stage.
    "test": dict(episodes=3, blocks=["quickstart", "debug"],
                 overrides={"time_limit": "60", "steps": "120", "prefill": "60", "eval_every": "120",
                            "pretrain_iterations": "3", "batch_length": "8"}),
}


def stage_flags_for(script: str, flags: dict) -> list[str]:
    """`--key value` for the keys of `flags` that `script` reads (the others would only draw a warning)."""
    import stage_flags

    mine = set(stage_flags.stage_keys(script, stage_flags.CONFIG_FILE))
    return [token for key, value in flags.items() if key in mine for token in (f"--{key}", str(value))]


def relay(stream, log) -> None:
    """Copy a stage's output to its log file and to our stdout, indented.

    Progress bars redraw one line with carriage returns: a terminal shows them in place, while a pipe or
    file (CI, nohup) gets only each bar's last state, not one line per redraw.
    """
    live = sys.stdout.isatty()
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        log.write(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.split(b"\r")[-1].decode(errors="replace")
            sys.stdout.write(("\r    " if live else "    ") + text + "\n")
        if live and b"\r" in pending:
            sys.stdout.write("\r    " + pending.split(b"\r")[-1].decode(errors="replace"))
        sys.stdout.flush()
    if pending:
        sys.stdout.write("    " + pending.split(b"\r")[-1].decode(errors="replace") + "\n")


def stage(name: str, command: list[str], done: pathlib.Path, log: pathlib.Path) -> None:
    """Run one stage unless its marker `done` exists; stream its output and stop the pipeline if it fails.

    The marker is written only after the stage exits cleanly, so a stage that was interrupted runs again
    (and the scripts themselves resume from their checkpoints).
    """
    if done.exists():
        print(f"[quickstart] {name}: already done ({done})", flush=True)
        return
    print(f"[quickstart] {name}: {shlex.join(command)}", flush=True)
    start = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        relay(process.stdout, f)
        code = process.wait()
    if code != 0:
        raise SystemExit(f"[quickstart] {name} failed (exit {code}); full output in {log}")
    done.parent.mkdir(parents=True, exist_ok=True)
    done.touch()
    print(f"[quickstart] {name}: done in {time.time() - start:.0f}s", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/quickstart", help="folder for data and runs")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per stage (0: torch's default); 1 is often faster on a busy machine")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    scale = SCALES[args.scale]
    root = (ROOT / args.root).resolve()
    data = root / "data"
    python = sys.executable
    tasks = ["metaworld_reach", "metaworld_drawer_close", "metaworld_door_open"]
    dirs = [str(data / t.removeprefix("metaworld_")) for t in tasks]
    flags = {**scale["overrides"], "source_tasks": ",".join(tasks), "source_task_dirs": ",".join(dirs),
             "device": args.device, "seed": args.seed, "threads": args.threads, "ood_threads": args.threads}
    blocks = ["--configs", "defaults", "metaworld", *scale["blocks"]]
    marks = root / ".done"
    start = time.time()

    stage("collect source data",
          [python, "collect_data.py", "--tasks", ",".join(tasks), "--episodes", str(scale["episodes"]),
           "--obs", "state", "--noise", "0.1", "--random_frac", "0.1", "--workers", "2",
           "--out", str(data), "--seed", args.seed],
          marks / "collect", root / "logs" / "collect.log")

    teacher = root / "teacher"
    stage("pretrain teacher",
          [python, "dreamer_pretrain.py", *blocks, *stage_flags_for("dreamer_pretrain.py", flags),
           "--logdir", str(teacher)],
          marks / "pretrain", root / "logs" / "pretrain.log")

    students = {"comet": ["--use_distill", "True", "--teacher_model_path", str(teacher / "teacher.pt")],
                "dreamer": ["--use_distill", "False"]}
    for name, options in students.items():
        logdir = root / name
        stage(f"student ({name})",
              [python, "dreamer_distill.py", *blocks, *stage_flags_for("dreamer_distill.py", flags),
               "--logdir", str(logdir), *options],
              marks / name, root / "logs" / f"{name}.log")

    ood = root / "ood"
    stage("OOD detection",
          [python, "ood_detection.py", *blocks, *stage_flags_for("ood_detection.py", flags),
           "--teacher_model_path", str(teacher / "teacher.pt"), "--source_dir", ",".join(dirs), "--student_dir", str(root / "comet" / "train_eps"), "--out", str(ood)],
          marks / "ood", root / "logs" / "ood.log")

    print(f"\n[quickstart] pipeline finished in {time.time() - start:.0f}s")
    print(f"[quickstart] TensorBoard:  .venv/bin/tensorboard --logdir {root}")
    print(f"[quickstart] OOD summary:  {ood / 'ood_report.json'}")
    print(f"[quickstart] students:     {root / 'comet'} (distilled), {root / 'dreamer'} (baseline)")


if __name__ == "__main__":
    main()
