"""GPU check: the device-sensitive tests on CUDA, then what costing the paper protocol needs, in one run.

    bash bench/gpu_check.sh                               # on the GPU machine (installs carried wheels first)
    python bench/gpu_check.py --device cuda --out DIR     # the same without the wrapper
    python bench/gpu_check.py --dry-run --out DIR         # CPU, tiny sizes: keeps this script from rotting

Parts, in order (the most informative and cheapest first, so a run cut short by its time budget still says
the most; compilation, minutes of it, comes last):
  machine       GPU, torch/CUDA versions, native bf16, the GL backend and the cost of one 64x64 frame;
  teacher/student  ms per update of the teacher (K = N = 6) in fp32 and bf16, and of a plain and a distilling
                student (K = 6) in bf16: wall ms, GPU-busy ms and kernels per update (torch.profiler), peak memory;
  graphs        the three updates in bf16 with `--cuda_graphs True` (each update captured once, then replayed);
  concurrent    updates/s of 1, 4 and 8 distilling students training at once on the GPU (separate processes);
  loop          env steps/s of a distilling pixel student loop end to end (rendering, acting, training);
  policy        one policy step's latency (one env, frame in, action out);
  tests         `pytest -m device --device <device> tests` in a subprocess (the pixel pipeline
                collect -> pretrain -> distill -> OOD included; at most 150 s), its log in pytest.log;
  compile       the three updates with `--compile True`, then with `--cuda_graphs True` as well;
  summary       ms per update per mode against the goals, the concurrency scaling, a 150k-env-step run's time.
Paper config: batch 50 x 50, 64 x 64 images, cnn_depth 32. The dry run uses the `debug` sizes.

Writes DIR/gpu_check.json (rewritten after every part, so a killed run keeps what it measured),
DIR/gpu_check.log (this output) and DIR/pytest.log. A part that fails records its error and the run
goes on; a part that would start after --budget_s is recorded as skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from envs import headless_gl  # noqa: E402

headless_gl()  # before torch, and anything that imports mujoco

import torch  # noqa: E402

from bench import device_speed, teacher_step  # noqa: E402
from bench.common import emit, machine  # noqa: E402

# Sizes: (teacher spec, student config blocks, warm-up, timed reps, loop prefill, loop steps after prefill, ...).
SIZES = {
    "paper": dict(teacher=teacher_step.PAPER, student=["defaults", "metaworld"], warmup=3, reps=10,
                  prefill=1000, steps=1500, policy_reps=200, distill_k=6, concurrent=[1, 4, 8], concurrent_s=15),
    "dry": dict(teacher=dict(k=2, n=2, batch_size=4, batch_length=8, cnn_depth=4, dyn_stoch=8, dyn_deter=16,
                             dyn_hidden=16, mlp_units=16),
                student=["defaults", "metaworld", "debug"], warmup=1, reps=1, prefill=20, steps=40,
                policy_reps=5, distill_k=2, concurrent=[1, 2], concurrent_s=2),
}
STUDENTS = ["student_plain", "student_distill"]
# The goals a GPU run is measured against (H200, paper config, bf16): ms per update, concurrent students, and
# the minutes of a 150k-env-step distilling student.
GOALS = {"teacher_ms": 25, "student_plain_ms": 15, "student_distill_ms": 20, "concurrent_students": 8,
         "run_150k_minutes": 30}
UPDATES_150K = 100 + (150_000 - 5000) // 5  # prefill_updates + an update every train_every = 5 env steps after prefill


class Tee:
    """Write to the terminal and to the log file at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()

    def flush(self):
        for s in self.streams:
            s.flush()


class Budget:
    """Wall-clock budget of the whole check; each part runs under an alarm at the budget's end."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def _alarm(signum, frame):
    raise TimeoutError("time budget of the check ran out during this part")


def run_part(name: str, fn, result: dict, budget: Budget, out: pathlib.Path, device) -> None:
    """Run one part into result[name]: its dict, or its error, or a note that the budget ran out."""
    left = budget.left()
    if left < 5:
        result[name] = {"skipped": f"time budget (--budget_s {budget.seconds:.0f}) spent"}
        print(f"[gpu_check] {name}: skipped, budget spent", flush=True)
        return
    print(f"[gpu_check] {name}: start ({left:.0f}s of budget left)", flush=True)
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(left)))
    try:
        result[name] = fn()
    except BaseException as err:  # noqa: BLE001 - every failure is a finding to record, not a reason to stop
        if isinstance(err, KeyboardInterrupt):
            raise
        result[name] = {"error": f"{type(err).__name__}: {err}"[:2000],
                        "traceback": traceback.format_exc()[-4000:]}
        print(f"[gpu_check] {name}: FAILED {type(err).__name__}: {err}", flush=True)
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    finally:
        signal.alarm(0)
    if isinstance(result[name], dict):
        result[name]["part_wall_s"] = round(time.monotonic() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"[gpu_check] {name}: {json.dumps(result[name])[:600]}", flush=True)


def machine_part(device) -> dict:
    """Versions, GPU, bf16 support, and which GL backend renders a 64x64 frame at what cost."""
    import configs
    import envs

    info = machine(device)
    info.update(torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), bf16=torch.cuda.is_bf16_supported(),
                    capability=list(torch.cuda.get_device_capability(device)))
    env = envs.make_env(configs.load_config(["--obs", "pixel"]), "metaworld_drawer_close")  # 64x64, the defaults
    try:
        env.reset(seed=0)
        start, n = time.perf_counter(), 50
        for _ in range(n):
            frame = env.render()
        info["render_sec_per_frame"] = (time.perf_counter() - start) / n
        info["frame_shape"] = list(frame.shape)
    finally:
        env.close()
    info["mujoco_gl"] = os.environ.get("MUJOCO_GL", "")
    return info


TESTS_CAP_S = 150  # the tests' share of the budget: what they have not finished by then is reported as not run


def tests_part(device, dry: bool, out: pathlib.Path, budget: Budget) -> dict:
    """The `device`-marked tests on `device` in a subprocess (one line per test, so a run stopped at its time cap
    still says which passed); the dry run only collects them."""
    command = [sys.executable, "-m", "pytest", "-rs", "-m", "device", "--device", str(device),
               "-p", "no:cacheprovider", "tests"] + (["--collect-only", "-q"] if dry else ["-v"])
    start = time.monotonic()
    timed_out = False
    with open(out / "pytest.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(10, min(budget.left() - 5, TESTS_CAP_S)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
    text = (out / "pytest.log").read_text()
    outcomes = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, re.M)
    counts = {word.lower(): sum(o == word for _, o in outcomes) for word in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
    collected = len(re.findall(r"^tests/\S+::\S+", text, re.M)) if dry else None
    return {"command": " ".join(command[1:]), "returncode": proc.returncode, "timed_out": timed_out,
            "counts": counts, "collected": collected,
            "failures": [name for name, o in outcomes if o in ("FAILED", "ERROR")][:20],
            "skips": re.findall(r"^SKIPPED .*$", text, re.M)[:20], "wall_s": round(time.monotonic() - start, 1)}


def speed_parts(size: dict, device, kinds: list[str], modes: list[str]) -> list[tuple[str, callable]]:
    """(name, thunk) per update kind (teacher, student_plain, student_distill) and precision mode."""
    w, r = size["warmup"], size["reps"]
    thunks = {"teacher": lambda m: device_speed.teacher_update(size["teacher"], device, m, w, r),
              "student_plain": lambda m: device_speed.student_update(size["student"], None, device, m, w, r),
              "student_distill": lambda m: device_speed.student_update(size["student"], size["distill_k"], device,
                                                                       m, w, r)}
    return [(f"{kind}_{mode}", lambda k=kind, m=mode: thunks[k](m)) for mode in modes for kind in kinds]


def summary(result: dict) -> dict:
    """ms per update per mode (and GPU-busy ms), the best mode's figures against GOALS, the concurrency scaling,
    and a 150k-env-step distilling student's minutes from the loop and from its parts."""
    def part(name):
        value = result.get(name, {})
        return value if isinstance(value, dict) and "sec_per_update" in value else {}

    out = {}
    for mode in device_speed.MODES:
        row = {}
        for kind in ("teacher", *STUDENTS):
            measured = part(f"{kind}_{mode}")
            if measured:
                row[f"{kind}_ms"] = round(1000 * measured["sec_per_update"], 2)
                row[f"{kind}_gpu_busy_ms"] = measured.get("gpu_busy_ms")
        if row:
            out[mode] = row
    best = {}
    for kind in ("teacher", *STUDENTS):
        times = {m: r[f"{kind}_ms"] for m, r in out.items() if f"{kind}_ms" in r and m != "fp32"}
        if times:
            mode = min(times, key=times.get)
            best[kind] = {"mode": mode, "ms": times[mode], "goal_ms": GOALS[f"{kind}_ms"],
                          "met": times[mode] <= GOALS[f"{kind}_ms"]}
    out["best"] = best
    concurrent = result.get("concurrent_bf16", {})
    if isinstance(concurrent, dict) and "scaling" in concurrent:
        most = max(int(n) for n in concurrent["scaling"])
        out["concurrent"] = {"scaling": concurrent["scaling"], "most_run": most,
                             "met": most >= GOALS["concurrent_students"]}
    loop = result.get("loop_distill_bf16", {})
    rate = loop.get("env_steps_per_s_training") if isinstance(loop, dict) else None
    run = {"updates": UPDATES_150K, "goal_minutes": GOALS["run_150k_minutes"]}
    if rate:
        run["loop_bf16_minutes"] = round(150_000 / rate / 60, 1)
    if "student_distill" in best and rate:
        # The loop's time per env step, with its updates' share replaced by the best mode's update time.
        eager_ms = out.get("bf16", {}).get("student_distill_ms")
        if eager_ms:
            saved = UPDATES_150K * (eager_ms - best["student_distill"]["ms"]) / 1000
            run["best_mode_minutes"] = round(max(150_000 / rate - saved, 0) / 60, 1)
    if len(run) > 2:
        run["met"] = min(v for k, v in run.items() if k.endswith("minutes") and k != "goal_minutes") <= run["goal_minutes"]
    out["run_150k_env_steps"] = run
    return out


def part_group(name: str) -> str:
    """The --skip group of a part: compile (any compiled mode), graphs (captured, not compiled), or the part's
    first word (teacher, student, concurrent, loop, policy, tests, machine)."""
    if "_compile" in name:
        return "compile"
    return "graphs" if name.endswith("_graphs") else name.split("_")[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", dest="dry", action="store_true", help="CPU, tiny sizes, tests only collected")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json, gpu_check.log, pytest.log")
    parser.add_argument("--budget_s", type=float, default=500, help="wall-clock budget of all parts together")
    parser.add_argument("--skip", default="", help="comma list of parts to leave out (tests, loop, compile, ...)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"gpu_check: error: --device {device}: no CUDA GPU here; use --dry-run on a CPU\n")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    size = SIZES["dry" if args.dry else "paper"]
    budget = Budget(args.budget_s)
    result = {"device": str(device), "dry_run": args.dry, "budget_s": args.budget_s,
              "sizes": {k: v for k, v in size.items()}}
    with open(out / "gpu_check.log", "w") as log, contextlib.redirect_stdout(Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(Tee(sys.stderr, log)):
        kinds = ["teacher", *STUDENTS]
        parts = [("machine", lambda: machine_part(device)),
                 *speed_parts(size, device, ["teacher"], ["fp32", "bf16"]),
                 *speed_parts(size, device, STUDENTS, ["bf16"]),
                 *speed_parts(size, device, kinds, ["bf16_graphs"]),
                 ("concurrent_bf16", lambda: device_speed.concurrent(
                     size["student"], size["distill_k"], device, "bf16", size["concurrent"], size["concurrent_s"],
                     timeout=max(30.0, budget.left() - 10))),
                 ("loop_distill_bf16", lambda: device_speed.pixel_loop(size["student"], device, "bf16", size["prefill"],
                                                                       size["steps"], size["distill_k"])),
                 ("policy_fp32", lambda: device_speed.policy_latency(size["student"], device, "fp32",
                                                                      size["policy_reps"])),
                 ("tests", lambda: tests_part(device, args.dry, out, budget)),
                 *speed_parts(size, device, kinds, ["bf16_compile", "bf16_compile_graphs"])]
        for name, fn in parts:
            group = part_group(name)
            if name in skip or group in skip:
                result[name] = {"skipped": "--skip"}
                continue
            if name.endswith("graphs") and device.type != "cuda":
                result[name] = {"skipped": "CUDA graphs need a CUDA device"}
                continue
            run_part(name, fn, result, budget, out, device)
        result["summary"] = summary(result)
        result["failed_parts"] = [n for n, v in result.items() if isinstance(v, dict) and "error" in v]
        tests = result.get("tests")
        if isinstance(tests, dict) and (tests.get("failures") or tests.get("returncode") not in (0, None)
                                        and not tests.get("timed_out")):
            result["failed_parts"].append("tests (see pytest.log)")
        result["wall_s"] = round(time.monotonic() - budget.start, 1)
        emit(result, out / "gpu_check.json")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed_parts"] else 0)
