"""The gates of the handle-press study (docs/results/handle_press_near/PROTOCOL.md, "Gates"), read from the gate
sweep's archived logs, written as GATES.md (and gates.json beside it).

  python -m analysis.gates docs/results/handle_press_near/gates --teachers docs/results/handle_press_near/teachers \
      --out docs/results/handle_press_near/GATES.md

G0 teachers plateaued, as amended (A1): per task, the least-squares slope of `train/loss/<task>` over the teacher's
   last 1,500 updates, relative to its mean there, at most 1% per 300 updates. The registered rule (the last two
   300-update windows' means within 2%) is reported beside it.
G1 teachers know the target: at each gate student's probe at 1,000 env steps, probe/teacher_r2 >= probe/student_r2
   + 0.05.
G2 the term acts: the median of the gate students' logged train/distill/grad_share after prefill in [s/2, 2s].
G3 relevance on the near views: the argmax shares of the three handle views, summed, averaged over each gate
   student's second half, >= 0.67.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

import tools
from analysis import load

PLATEAU_TOLERANCE = 0.02
PLATEAU_WINDOW = 300  # updates per window; after a doubling the same windows at the longer run's end
SLOPE_SPAN, SLOPE_TOLERANCE = 1500, 0.01  # amendment A1: |relative slope| per 300 updates over the last 1,500
PROBE_MARGIN = 0.05
PROBE_STEP = 1000
NEAR_VIEWS = ("metaworld_handle_press_side", "metaworld_handle_pull", "metaworld_handle_pull_side")
NEAR_SHARE = 0.67


GATE_HINT = "; run the gate sweep first (sweeps/specs/handle_press_near_gates.yaml)"


def rows(run: pathlib.Path) -> list[dict]:
    return load.read_rows(run, GATE_HINT)


def config(run: pathlib.Path) -> dict:
    return load.read_config(run, GATE_HINT)


def g0_plateau(teacher: pathlib.Path) -> dict:
    """Per task: the registered windows rule (the means of the last two windows of PLATEAU_WINDOW updates and their
    relative change) and amendment A1's slope rule (the least-squares slope over the last SLOPE_SPAN updates,
    relative to the mean there, per PLATEAU_WINDOW updates), which decides."""
    total, width = int(config(teacher)["pretrain_iterations"]), PLATEAU_WINDOW
    found = [r for r in rows(teacher) if "step" in r]
    tasks = sorted({k.split("/", 2)[2] for r in found for k in r if k.startswith("train/loss/")})
    out = {}
    for task in tasks:
        key = f"train/loss/{task}"
        points = np.array([(r["step"], r[key]) for r in found if key in r], float).reshape(-1, 2)
        def mean(lo, hi):
            inside = points[(points[:, 0] > lo) & (points[:, 0] <= hi), 1]
            return float(inside.mean()) if len(inside) else float("nan")
        late, early = mean(total - width, total), mean(total - 2 * width, total - width)
        change = abs(late - early) / abs(early) if early else float("inf")
        tail = points[points[:, 0] > total - SLOPE_SPAN]
        slope = (float(np.polyfit(tail[:, 0], tail[:, 1], 1)[0] * width / tail[:, 1].mean())
                 if len(tail) >= 3 else float("nan"))
        out[task] = {"early": early, "late": late, "change": change, "slope": slope,
                     "pass": bool(abs(slope) <= SLOPE_TOLERANCE)}
    return {"windows": [total - 2 * width, total - width, total], "slope_from": total - SLOPE_SPAN, "tasks": out,
            "pass": bool(out) and all(t["pass"] for t in out.values())}


def g1_probe(student: list[dict]) -> dict:
    """The probe at 1,000 env steps, the step PROTOCOL.md names (the first probe at or after it: a run whose
    probe_every was scaled to its length probes earlier too, inside the random prefill)."""
    first = next((r for r in student if "probe/teacher_r2" in r and "probe/student_r2" in r
                  and r.get("step", 0) >= PROBE_STEP), None)
    if first is None:
        return {"pass": False, "reason": "no probe row"}
    teacher, own = first["probe/teacher_r2"], first["probe/student_r2"]
    return {"step": first["step"], "teacher_r2": teacher, "student_r2": own,
            "pass": bool(teacher >= own + PROBE_MARGIN)}


def g2_share(student: list[dict], prefill: int, target: float) -> dict:
    values = [r["train/distill/grad_share"] for r in student
              if r.get("step", 0) > prefill and "train/distill/grad_share" in r]
    median = float(np.median(values)) if values else float("nan")
    return {"values": values, "median": median, "range": [target / 2, 2 * target],
            "pass": bool(values) and target / 2 <= median <= 2 * target}


def g3_relevance(student: list[dict], steps: int) -> dict:
    late = [r for r in student if r.get("step", 0) > steps / 2 and "train/distill/relevance_entropy" in r]
    # A view pruned away holds no position: its share is 0 from then on.
    sums = [sum(r.get(f"train/distill/relevance_argmax_{v}", 0.0) for v in NEAR_VIEWS) for r in late]
    mean = float(np.mean(sums)) if sums else float("nan")
    return {"rows": len(sums), "near_share": mean, "pass": bool(sums) and mean >= NEAR_SHARE}


def check_students(folder: pathlib.Path) -> dict:
    out = {}
    for run in sorted(p.parent for p in folder.glob("students/*/*/seed*/metrics.jsonl")):
        c, found = config(run), rows(run)
        if str(c.get("distill_weight")) != "auto":
            raise tools.UsageError(f"{run}: G2 is defined for distill_weight auto, got {c.get('distill_weight')}")
        out[run.name] = {"teacher": c.get("teacher_model_path"), "G1": g1_probe(found),
                         "G2": g2_share(found, int(c["prefill"]), float(c["distill_share"])),
                         "G3": g3_relevance(found, int(c["steps"]))}
    return out


def gates(folder: pathlib.Path, teachers_folder: pathlib.Path | None = None) -> dict:
    """G0 on the teachers under `teachers_folder` (default: <folder>/teachers), G1-G3 on the gate students under
    <folder>/students."""
    found = sorted((teachers_folder or folder / "teachers").glob("*/metrics.jsonl"))
    teachers = {p.parent.name: g0_plateau(p.parent) for p in found}
    students = check_students(folder)
    if not teachers or not students:
        raise tools.UsageError(f"{folder}: needs teacher runs (teachers/*/ or --teachers) and gate students "
                               f"(students/*/*/seed*/): the gate sweep's archive")
    verdict = {"G0": all(t["pass"] for t in teachers.values())}
    for gate in ("G1", "G2", "G3"):
        verdict[gate] = all(s[gate]["pass"] for s in students.values())
    return {"teachers": teachers, "students": students, "verdict": verdict, "pass": all(verdict.values())}


def _mark(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def markdown(result: dict, folder: pathlib.Path, teachers: pathlib.Path | None = None) -> str:
    command = f"python -m analysis.gates {folder}" + (f" --teachers {teachers}" if teachers else "")
    lines = ["# Gates of the handle-press study", "",
             f"Made by `{command}` from the gate sweep's archived logs "
             "(sweeps/specs/handle_press_near_gates.yaml); the rules are PROTOCOL.md's \"Gates\".", "",
             "| gate | verdict |", "|---|---|"]
    lines += [f"| {g} | {_mark(ok)} |" for g, ok in result["verdict"].items()]
    lines += ["", f"**All gates: {_mark(result['pass'])}.**", "", "## G0 teachers plateaued", ""]
    for name, t in result["teachers"].items():
        a, b, c = t["windows"]
        lines += [f"Teacher {name}: the slope of `train/loss/<task>` over updates ({t['slope_from']}, {c}] per "
                  f"{PLATEAU_WINDOW} updates, relative to its mean there (amendment A1: passes at ≤ "
                  f"{SLOPE_TOLERANCE:.0%}); beside it the registered rule, the means over ({a}, {b}] and ({b}, {c}] "
                  f"(≤ {PLATEAU_TOLERANCE:.0%} apart).", "",
                  "| task | slope per 300 updates | verdict (A1) | earlier window | later window | change (registered) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {task} | {v['slope']:+.2%} | {_mark(v['pass'])} | {v['early']:.2f} | {v['late']:.2f} | "
                  f"{v['change']:.1%} |" for task, v in t["tasks"].items()]
        lines.append("")
    lines += ["## G1–G3 gate students", "",
              "| student | teacher | G1 teacher R² | G1 student R² | G1 | G2 median r (range) | G2 | "
              "G3 handle views' argmax share | G3 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["students"].items():
        g1, g2, g3 = s["G1"], s["G2"], s["G3"]
        teacher = pathlib.Path(str(s["teacher"])).parent.name
        lo, hi = g2["range"]
        lines.append(f"| {name} | {teacher} | {g1.get('teacher_r2', float('nan')):.3f} | "
                     f"{g1.get('student_r2', float('nan')):.3f} | {_mark(g1['pass'])} | "
                     f"{g2['median']:.3f} ({lo:.2f}–{hi:.2f}) | {_mark(g2['pass'])} | "
                     f"{g3['near_share']:.3f} ({g3['rows']} rows) | {_mark(g3['pass'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    def run(args_list):
        parser = tools.UsageParser(prog="python -m analysis.gates", description=__doc__.split("\n")[0])
        parser.add_argument("folder", type=pathlib.Path, help="the gate sweep's archive (or sweep folder)")
        parser.add_argument("--out", type=pathlib.Path, required=True, help="GATES.md to write (gates.json beside)")
        parser.add_argument("--teachers", type=pathlib.Path, default=None,
                            help="folder of the teacher runs (default: FOLDER/teachers), e.g. the study's archive's")
        args = parser.parse_args(args_list)
        result = gates(args.folder, args.teachers)
        text = markdown(result, args.folder, args.teachers)
        tools.atomic_write(args.out.with_name("gates.json"),
                           lambda f: f.write(json.dumps(result, indent=1, default=float).encode()))
        tools.atomic_write(args.out, lambda f: f.write(text.encode()))
        print(text)
    return tools.run_main("python -m analysis.gates", run, argv)


if __name__ == "__main__":
    sys.exit(main())
