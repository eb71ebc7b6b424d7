"""Speed on one device, at a given size: teacher and student updates per precision mode, one policy
step's latency, and the env steps/s of the pixel student loop end to end. Used by bench/gpu_check.py;
each function returns a JSON-ready dict.

Precision modes: `fp32`; `bf16` (bf16 autocast, `precision: 16`, which the models honour on CUDA only);
`bf16_compile` (bf16 plus `torch.compile` of the convolutional parts, `models.compile_model`).

Shape legend: B batch, T sequence length, K source tasks, A action size.
"""
from __future__ import annotations

import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
from bench import distill_step, teacher_step  # noqa: E402

A = 4
MODES = {"fp32": (32, False), "bf16": (16, False), "bf16_compile": (16, True)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset_peak (None on a CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)


def teacher_update(spec: dict, device: torch.device, mode: str, warmup: int, reps: int) -> dict:
    """Seconds per teacher world-model update (loss, backward, clip, Adam) on a mixed-task batch."""
    precision, compile_ = MODES[mode]
    reset_peak(device)
    start = time.perf_counter()
    out = teacher_step.update_rate(spec, device, warmup, reps, precision=precision, compile_=compile_)
    out.update(mode=mode, peak_gpu_gib=peak_gib(device), wall_s_incl_warmup=round(time.perf_counter() - start, 2))
    return out


def student_config(blocks: list[str], device: torch.device, mode: str, overrides: list[str] = ()):
    precision, _ = MODES[mode]
    return configs.load_config(["--configs", *blocks, "--device", str(device), "--precision", str(precision),
                              *overrides])


def build_student(config, k: int | None, device: torch.device, mode: str):
    """Agent (with a random K-task comet teacher when k is set), compiled in the bf16_compile mode."""
    from models import compile_model

    agent, _ = distill_step.build(config, k, None, device, seed=0)
    if MODES[mode][1]:
        compile_model(agent.wm)
        if agent.distiller is not None:
            compile_model(agent.distiller.teacher)
    return agent


def student_update(blocks: list[str], k: int | None, device: torch.device, mode: str, warmup: int,
                   reps: int, overrides: list[str] = ()) -> dict:
    """Seconds per full student update (`Agent.train`: world model [+ distiller] + behavior); k None is a
    plain Dreamer student, k > 0 a comet student distilling from K source tasks, all active."""
    config = student_config(blocks, device, mode, overrides)
    reset_peak(device)
    start = time.perf_counter()
    agent = build_student(config, k, device, mode)
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    step = iter(range(10 ** 9))
    seconds = teacher_step.timed(lambda: agent.train(batch, next(step)), device, warmup, reps)
    return {"sec_per_update": seconds, "cpu_sec_per_update": teacher_step.cpu_median(),
            "updates_per_sec": 1.0 / seconds, "k": k, "mode": mode,
            "batch": [config.batch_size, config.batch_length], "size": list(config.size),
            "cnn_depth": config.cnn_depth, "warmup": warmup, "timed": reps, "peak_gpu_gib": peak_gib(device),
            "wall_s_incl_warmup": round(time.perf_counter() - start, 2)}


@torch.no_grad()
def policy_latency(blocks: list[str], device: torch.device, mode: str, reps: int, overrides: list[str] = ()) -> dict:
    """Wall seconds of one policy step for one env (numpy frame in, numpy action out), median of `reps`."""
    config = student_config(blocks, device, mode, overrides)
    agent = build_student(config, None, device, mode)
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


def pixel_loop(blocks: list[str], device: torch.device, mode: str, prefill: int, steps: int,
               extra: list[str] = ()) -> dict:
    """Env steps/s of the real student loop (`training.student.Trainer`) on pixels, from its own fps log:
    random prefill, then acting + training every `train_every` env steps; rendering included."""
    import os

    from training.student import Trainer

    log_every = max(steps // 4, 10)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--configs", *blocks, "--logdir", tmp, "--device", str(device), "--progress", "False",
                "--precision", str(MODES[mode][0]), "--prefill", str(prefill), "--prefill_updates", "0",
                "--steps", str(prefill + steps), "--log_every", str(log_every), "--eval_every", "0",
                "--checkpoint_every", "0", *extra]
        config = configs.load_config(argv)
        start = time.perf_counter()
        trainer = Trainer(config)
        try:
            trainer.run()
        finally:
            trainer.close()
        wall = time.perf_counter() - start
        lines = [json.loads(line) for line in (pathlib.Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    fps = [(r["step"], r["perf/fps"]) for r in lines if "perf/fps" in r]
    random_fps = [f for s, f in fps if s <= prefill]
    # Skip the first interval after prefill: it holds the first updates' warm-up.
    train_fps = [f for s, f in fps if s > prefill + log_every]
    return {"task": config.task, "mode": mode, "batch": [config.batch_size, config.batch_length],
            "train_every": config.train_every, "action_repeat": config.action_repeat, "prefill": prefill,
            "steps_after_prefill": steps, "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
            "env_steps_per_s_random": round(statistics.median(random_fps), 1) if random_fps else None,
            "env_steps_per_s_training": round(statistics.median(train_fps), 1) if train_fps else None,
            "wall_s": round(wall, 1)}
