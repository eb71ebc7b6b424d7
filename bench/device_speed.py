"""Speed on one device, at a given size: teacher and student updates per execution mode (wall ms, GPU-busy ms and
kernels per update from torch.profiler, peak memory), one policy step's latency, the env steps/s of a
distilling pixel student loop end to end, and the throughput of N students training at once on one device.
Used by bench/gpu_check.py; each function returns a JSON-ready dict.

Execution modes: `fp32`; `bf16` (bf16 autocast, `precision: 16`, which the models honour where the device has
native bf16); `bf16_graphs` (bf16 plus `--cuda_graphs True`: the whole update captured in a CUDA graph and
replayed, `models.graphs`; CUDA only); `bf16_compile` (bf16 plus `--compile True`: the convolutions and the RSSM
steps, `models.world_model.compile_model`); `bf16_compile_graphs` (both).

    python bench/device_speed.py worker --out f.json [...]   # one of the concurrent students (concurrent())

Shape legend: B batch, T sequence length, K source tasks, A action size.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
from bench import distill_step, teacher_step  # noqa: E402

A = 4
MODES = {"fp32": (32, False, False), "bf16": (16, False, False), "bf16_graphs": (16, False, True),
         "bf16_compile": (16, True, False), "bf16_compile_graphs": (16, True, True)}  # (precision, compile, graphs)
PROFILED = 3  # updates under torch.profiler per measurement (after the timed ones)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset_peak (None on a CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)


def busy(fn, device: torch.device, reps: int = PROFILED) -> dict:
    """Per call of `fn`, from torch.profiler over `reps` calls: on CUDA the summed kernel time (GPU-busy ms, to
    set against the wall ms: the rest is the GPU waiting for the host) and the kernels launched; on a CPU the
    operators run (the dry run's stand-in)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        teacher_step.sync(device)
    if not cuda:
        return {"cpu_ops_per_update": round(len(prof.events()) / reps)}
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"gpu_busy_ms": round(sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / reps, 3),
            "kernels_per_update": round(len(kernels) / reps)}


def teacher_update(spec: dict, device: torch.device, mode: str, warmup: int, reps: int) -> dict:
    """Seconds per teacher world-model update (loss, backward, clip, Adam) on a mixed-task batch."""
    precision, compile_, graphs = MODES[mode]
    reset_peak(device)
    start = time.perf_counter()
    out = teacher_step.update_rate(spec, device, warmup, reps, precision=precision, compile_=compile_,
                                   graphs=graphs, profile=lambda step: busy(step, device))
    out.update(mode=mode, peak_gpu_gib=peak_gib(device), wall_s_incl_warmup=round(time.perf_counter() - start, 2))
    return out


def student_config(blocks: list[str], device: torch.device, mode: str, overrides: list[str] = ()):
    precision, compile_, graphs = MODES[mode]
    return configs.load_config(["--configs", *blocks, "--device", str(device), "--precision", str(precision),
                                "--compile", str(compile_), "--cuda_graphs", str(graphs), *overrides])


def build_student(config, k: int | None, device: torch.device):
    """Agent (with a random K-task comet teacher when k is set), compiled and captured as `config` says (the
    same function the student stage uses for `--compile` / `--cuda_graphs`)."""
    from training.student import accelerate

    agent, _ = distill_step.build(config, k, None, device, seed=0)
    accelerate(agent, config)
    return agent


def student_update(blocks: list[str], k: int | None, device: torch.device, mode: str, warmup: int,
                   reps: int, overrides: list[str] = ()) -> dict:
    """Seconds per full student update (`Agent.train`: world model [+ distiller] + behavior); k None is a
    plain Dreamer student, k > 0 a comet student distilling from K source tasks, all active."""
    config = student_config(blocks, device, mode, overrides)
    reset_peak(device)
    start = time.perf_counter()
    agent = build_student(config, k, device)
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    step = iter(range(10 ** 9))
    update = lambda: agent.train(batch, next(step))  # noqa: E731
    seconds = teacher_step.timed(update, device, warmup, reps)
    cpu = teacher_step.cpu_median()
    return {"sec_per_update": seconds, "cpu_sec_per_update": cpu, **busy(update, device),
            "updates_per_sec": 1.0 / seconds, "k": k, "mode": mode,
            "batch": [config.batch_size, config.batch_length], "size": list(config.size),
            "cnn_depth": config.cnn_depth, "warmup": warmup, "timed": reps, "peak_gpu_gib": peak_gib(device),
            "wall_s_incl_warmup": round(time.perf_counter() - start, 2)}


@torch.no_grad()
def policy_latency(blocks: list[str], device: torch.device, mode: str, reps: int, overrides: list[str] = ()) -> dict:
    """Wall seconds of one policy step for one env (numpy frame in, numpy action out), median of `reps`."""
    config = student_config(blocks, device, mode, overrides)
    agent = build_student(config, None, device)
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 256, (1, *config.size, 3), dtype=np.uint8), "is_first": np.array([True])}
    _, state = agent.policy(obs, None, training=True)
    obs["is_first"] = np.array([False])
    times = []
    for i in range(reps + 3):
        start = time.perf_counter()
        _, state = agent.policy(obs, state, training=True)  # returns numpy: the device is synced
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"sec_median": statistics.median(times), "sec_p90": float(np.quantile(times, 0.9)), "reps": reps,
            "mode": mode, "envs": 1}


def random_teacher_file(config, k: int, path: pathlib.Path) -> pathlib.Path:
    """A randomly initialised K-task MoE teacher checkpoint for `config`'s sizes (speed does not depend on its
    weights), written where `--teacher_model_path` can read it."""
    import envs
    import tools
    from models import TeacherWorldModel
    from models.teacher_io import teacher_payload

    tasks = [t for t in envs.TASKS if t != config.task][:k]
    tconfig = configs.Config({**config, "source_tasks": tasks, "n_experts": k, "teacher_encoder_mode": "moe"})
    torch.manual_seed(0)
    return tools.save_checkpoint(path, teacher_payload(TeacherWorldModel(tconfig, A), None, 0, tconfig))


def pixel_loop(blocks: list[str], device: torch.device, mode: str, prefill: int, steps: int, distill_k: int | None = None,
               extra: list[str] = ()) -> dict:
    """Env steps/s of the real student loop (`training.student.Trainer`) on pixels, from its own fps log:
    random prefill, then acting + training every `train_every` env steps; rendering included. With
    `distill_k`, the student distils (comet) from a random K-task teacher, as most of a comparison's students do."""
    from training.student import Trainer

    log_every = max(steps // 4, 10)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--configs", *blocks, "--logdir", f"{tmp}/run", "--device", str(device), "--progress", "False",
                "--precision", str(MODES[mode][0]), "--compile", str(MODES[mode][1]),
                "--cuda_graphs", str(MODES[mode][2]), "--prefill", str(prefill), "--prefill_updates", "0",
                "--steps", str(prefill + steps), "--log_every", str(log_every), "--eval_every", "0",
                "--checkpoint_every", "0", *extra]
        if distill_k:
            teacher = random_teacher_file(configs.load_config(argv), distill_k, pathlib.Path(tmp) / "teacher.pt")
            argv += ["--use_distill", "True", "--distill_mode", "comet", "--teacher_model_path", str(teacher)]
        config = configs.load_config(argv)
        start = time.perf_counter()
        trainer = Trainer(config)
        try:
            trainer.run()
        finally:
            trainer.close()
        wall = time.perf_counter() - start
        lines = [json.loads(line) for line in (pathlib.Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    fps = [(r["step"], r["perf/fps"]) for r in lines if "perf/fps" in r]
    random_fps = [f for s, f in fps if s <= prefill]
    # Skip the first interval after prefill: it holds the first updates' warm-up.
    train_fps = [f for s, f in fps if s > prefill + log_every]
    return {"task": config.task, "mode": mode, "distill_k": distill_k, "batch": [config.batch_size, config.batch_length],
            "train_every": config.train_every, "action_repeat": config.action_repeat, "prefill": prefill,
            "steps_after_prefill": steps, "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
            "env_steps_per_s_random": round(statistics.median(random_fps), 1) if random_fps else None,
            "env_steps_per_s_training": round(statistics.median(train_fps), 1) if train_fps else None,
            "wall_s": round(wall, 1)}


# --- students side by side on one device -----------------------------------------------------------------

def concurrent(blocks: list[str], k: int | None, device: torch.device, mode: str, counts: list[int], seconds: float,
               timeout: float) -> dict:
    """Aggregate updates/s of n students training at once on one device, for each n in `counts`: n worker
    processes (`worker` below) each build a student, warm up, wait until all are ready, then update for
    `seconds`. Per n: total and per-student updates/s, each worker's peak memory; `scaling` is the total
    against n = 1's (n where it stops growing is where the GPU saturates)."""
    out = {"mode": mode, "k": k, "seconds": seconds}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            go = pathlib.Path(tmp) / "go"
            procs = [subprocess.Popen([sys.executable, str(ROOT / "bench" / "device_speed.py"), "worker", "--blocks",
                                       ",".join(blocks), "--k", str(k or 0), "--device", str(device), "--mode", mode,
                                       "--seconds", str(seconds), "--go", str(go), "--out", f"{tmp}/{i}.json"],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/{i}.log", "w"))
                     for i in range(n)]
            deadline = time.monotonic() + timeout
            while not all(pathlib.Path(f"{tmp}/{i}.json.ready").exists() for i in range(n)):
                if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    for proc in procs:
                        proc.kill()
                    logs = " | ".join(pathlib.Path(f"{tmp}/{i}.log").read_text()[-300:] for i in range(n))
                    raise RuntimeError(f"concurrent students (n={n}) did not all get ready: {logs}")
                time.sleep(0.2)
            go.touch()
            for proc in procs:
                proc.wait(timeout=max(10.0, deadline - time.monotonic() + seconds))
            runs = [json.loads(pathlib.Path(f"{tmp}/{i}.json").read_text()) for i in range(n)]
        total = sum(r["updates"] / r["seconds"] for r in runs)
        out[str(n)] = {"updates_per_s_total": round(total, 2), "updates_per_s_each": round(total / n, 2),
                       "peak_gpu_gib_each": [r["peak_gpu_gib"] for r in runs]}
    first = out.get(str(counts[0]), {}).get("updates_per_s_total")
    out["scaling"] = {str(n): round(out[str(n)]["updates_per_s_total"] / first, 2) for n in counts} if first else {}
    return out


def worker(argv=None) -> None:
    """One of `concurrent`'s students: build, warm up (compilation and capture included), write `<out>.ready`,
    wait for the go file, update for `--seconds`, write {updates, seconds, peak_gpu_gib} to `--out`."""
    parser = argparse.ArgumentParser()
    for flag, kind, default in (("--blocks", str, ""), ("--k", int, 0), ("--device", str, "cuda"),
                                ("--mode", str, "bf16"), ("--seconds", float, 10.0), ("--go", str, ""),
                                ("--out", str, "")):
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    config = student_config(args.blocks.split(","), device, args.mode)
    agent = build_student(config, args.k or None, device)
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    for step in range(3):
        agent.train(batch, step)
    teacher_step.sync(device)
    pathlib.Path(args.out + ".ready").touch()
    while not pathlib.Path(args.go).exists():
        time.sleep(0.05)
    start, updates = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        agent.train(batch, 3 + updates)
        updates += 1
    teacher_step.sync(device)
    elapsed = time.perf_counter() - start
    pathlib.Path(args.out).write_text(json.dumps({"updates": updates, "seconds": elapsed,
                                                  "peak_gpu_gib": peak_gib(device)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2:])
    else:
        sys.exit("usage: python bench/device_speed.py worker --out f.json [...] (bench/gpu_check.py runs the rest)")
