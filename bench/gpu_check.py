"""GPU check: the device-sensitive tests on CUDA, then speed and memory at the paper config, in one run.

    bash bench/gpu_check.sh                               # on the GPU machine (installs carried wheels first)
    python bench/gpu_check.py --device cuda --out DIR     # the same without the wrapper
    python bench/gpu_check.py --dry-run --out DIR         # CPU, tiny sizes: keeps this script from rotting

Parts, in order (the most informative first, so a run cut short by its time budget still says the most):
  machine       GPU, torch/CUDA versions, native bf16, the GL backend and the cost of one 64x64 frame;
  tests         `pytest -m device --device <device> tests` in a subprocess (the pixel pipeline
                collect -> pretrain -> distill -> OOD included), its log in pytest.log;
  teacher       seconds per teacher update (K = N = 6) in fp32, bf16 autocast and bf16 + torch.compile
                (compilation excluded by the warm-up), with peak GPU memory;
  student       the same for a plain student and a distilling one (K = 6), fp32 and bf16;
  policy        one policy step's latency (one env, frame in, action out);
  loop          env steps/s of the pixel student loop end to end (rendering, acting, training);
  compile       the two student updates in bf16 + torch.compile;
  summary       the ratios the project's goals name.
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

# Sizes: (teacher spec, student config blocks, warm-up, timed reps, loop prefill, loop steps after prefill).
SIZES = {
    "paper": dict(teacher=teacher_step.PAPER, student=["defaults", "metaworld"], warmup=3, reps=10,
                  prefill=1000, steps=2000, policy_reps=200, distill_k=6),
    "dry": dict(teacher=dict(k=2, n=2, batch_size=4, batch_length=8, cnn_depth=4, dyn_stoch=8, dyn_deter=16,
                             dyn_hidden=16, mlp_units=16),
                student=["defaults", "metaworld", "debug"], warmup=1, reps=1, prefill=20, steps=40,
                policy_reps=5, distill_k=2),
}


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


def tests_part(device, dry: bool, out: pathlib.Path, budget: Budget) -> dict:
    """The `device`-marked tests on `device` in a subprocess; the dry run only collects them."""
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "device", "--device", str(device),
               "-p", "no:cacheprovider", "tests"] + (["--collect-only"] if dry else [])
    start = time.monotonic()
    with open(out / "pytest.log", "w") as log:
        proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=max(10, min(budget.left() - 5, 240)))
    text = (out / "pytest.log").read_text()
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)",
                                                     text.splitlines()[-1] if text else "")}
    collected = len(re.findall(r"^tests/\S+::\S+", text, re.M)) if dry else None
    return {"command": " ".join(command[1:]), "returncode": proc.returncode, "counts": counts,
            "collected": collected, "failures": re.findall(r"^FAILED .*$", text, re.M)[:20],
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
    """Ratios the goals name: teacher ms in bf16 + compile (goal <= 50 ms), distill / plain (<= 1.5)."""
    def sec(name):
        part = result.get(name, {})
        return part.get("sec_per_update") if isinstance(part, dict) else None

    out = {}
    for mode in device_speed.MODES:
        t, p, d = sec(f"teacher_{mode}"), sec(f"student_plain_{mode}"), sec(f"student_distill_{mode}")
        out[mode] = {"teacher_ms": t and round(1000 * t, 2), "student_plain_ms": p and round(1000 * p, 2),
                     "student_distill_ms": d and round(1000 * d, 2),
                     "distill_over_plain": (p and d) and round(d / p, 3)}
    for mode in ("bf16", "bf16_compile"):
        base = sec("teacher_fp32")
        if base and sec(f"teacher_{mode}"):
            out[mode]["teacher_speedup_over_fp32"] = round(base / sec(f"teacher_{mode}"), 2)
    best = out["bf16_compile"]["teacher_ms"]
    out["goal_teacher_bf16_compile_le_50ms"] = None if best is None else best <= 50
    ratio = out["bf16_compile"]["distill_over_plain"] or out["bf16"]["distill_over_plain"]
    out["goal_distill_over_plain_le_1_5"] = None if ratio is None else ratio <= 1.5
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", dest="dry", action="store_true", help="CPU, tiny sizes, tests only collected")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json, gpu_check.log, pytest.log")
    parser.add_argument("--budget_s", type=float, default=420, help="wall-clock budget of all parts together")
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
        parts = [("machine", lambda: machine_part(device)),
                 ("tests", lambda: tests_part(device, args.dry, out, budget)),
                 *speed_parts(size, device, ["teacher"], list(device_speed.MODES)),
                 *speed_parts(size, device, ["student_plain", "student_distill"], ["fp32", "bf16"]),
                 ("policy_fp32", lambda: device_speed.policy_latency(size["student"], device, "fp32",
                                                                      size["policy_reps"])),
                 ("loop_bf16", lambda: device_speed.pixel_loop(size["student"], device, "bf16", size["prefill"],
                                                               size["steps"])),
                 *speed_parts(size, device, ["student_plain", "student_distill"], ["bf16_compile"])]
        for name, fn in parts:
            group = "compile" if name.endswith("compile") else name.split("_")[0]
            if name in skip or group in skip:
                result[name] = {"skipped": "--skip"}
                continue
            run_part(name, fn, result, budget, out, device)
        result["summary"] = summary(result)
        result["failed_parts"] = [n for n, v in result.items() if isinstance(v, dict) and "error" in v]
        if isinstance(result.get("tests"), dict) and result["tests"].get("returncode") not in (0, None):
            result["failed_parts"].append("tests (see pytest.log)")
        result["wall_s"] = round(time.monotonic() - budget.start, 1)
        emit(result, out / "gpu_check.json")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed_parts"] else 0)
