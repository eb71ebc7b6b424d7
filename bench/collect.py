"""Data-collection benchmark: VecEnv pixel throughput (1 vs 2 envs), frame cost with and without render_fast,
and wall time of collecting pixel episodes. Prints one JSON object.

    python bench/collect.py [--steps 300] [--frames 200] [--episodes 10] [--task metaworld_drawer_close]
                            [--collect_workers 1,2] [--parts vecenv,frame,collect]
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from envs import headless_gl  # noqa: E402

headless_gl()  # before torch, and anything that imports mujoco

import numpy as np  # noqa: E402

import collect_data  # noqa: E402
import envs  # noqa: E402
import configs  # noqa: E402
from bench.common import emit, machine  # noqa: E402


def vec_throughput(config, task: str, counts=(1, 2), steps: int = 300, block: int = 25, seed: int = 0) -> dict:
    """Policy steps per second (summed over envs) of VecEnvs of each size in `counts`, stepping uniform random
    pixel actions. The sizes run in alternating blocks of `block` steps, so load from other jobs hits all alike."""
    rng = np.random.default_rng(seed)
    vecs = {n: envs.VecEnv(config, task, n=n, seed=seed) for n in counts}
    seconds = {n: 0.0 for n in counts}
    try:
        def advance(n: int, count: int) -> None:
            vec = vecs[n]
            for _ in range(count):
                out = vec.step(rng.uniform(-1, 1, (n, vec.act_dim)))
                done = np.flatnonzero(out["is_last"])
                if len(done):  # resets are part of collecting, so they stay inside the timing
                    vec.reset(done)

        for n, vec in vecs.items():
            vec.reset()
            advance(n, 10)  # warm-up: the first frames set up the GL context
        for _ in range(max(1, steps // block)):
            for n in counts:
                start = time.perf_counter()
                advance(n, block)
                seconds[n] += time.perf_counter() - start
    finally:
        for vec in vecs.values():
            vec.close()
    done_steps = max(1, steps // block) * block
    return {f"envs_{n}": {"envs": n, "policy_steps": done_steps * n, "seconds": round(seconds[n], 3),
                          "policy_steps_per_s": round(done_steps * n / seconds[n], 1)} for n in counts}


def _solo(config: dict, task: str, steps: int, seed: int, start) -> float:
    """Child of `independent_ceiling`: one in-process env stepping on its own; returns its steps per second."""
    vec = envs.VecEnv(config, task, n=1, seed=seed)
    rng = np.random.default_rng(seed)
    vec.reset()
    vec.step(rng.uniform(-1, 1, (1, vec.act_dim)))
    start.wait()
    begin = time.perf_counter()
    for _ in range(steps):
        if vec.step(rng.uniform(-1, 1, (1, vec.act_dim)))["is_last"][0]:
            vec.reset()
    rate = steps / (time.perf_counter() - begin)
    vec.close()
    return rate


def independent_ceiling(config, task: str, steps: int) -> dict:
    """Summed steps/s of 2 processes stepping their own env with no coordination: the most that 2 envs can
    reach on this machine, to judge the VecEnv ratio against."""
    import concurrent.futures as futures
    import multiprocessing as mp

    context = mp.get_context("spawn")
    with context.Manager() as manager, futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        start = manager.Event()
        jobs = [pool.submit(_solo, dict(config), task, steps, seed, start) for seed in (0, 1)]
        time.sleep(3.0)  # both children built their env
        start.set()
        rates = [job.result() for job in jobs]
    return {"processes": 2, "policy_steps_per_s": round(sum(rates), 1)}


def frame_ms(config, task: str, frames: int) -> dict:
    """Milliseconds per 64x64 frame with render_fast on and off (interleaved blocks, so load drifts hit both)."""
    made = {flag: envs.make_env(dict(config, obs="pixel", render_fast=flag), task, seed=0) for flag in (True, False)}
    times = {True: [], False: []}
    for env in made.values():
        env.reset()
        env.render()
    block = max(1, frames // 10)
    for _ in range(max(1, frames // block)):
        for flag, env in made.items():
            start = time.perf_counter()
            for _ in range(block):
                env.render()
            times[flag].append((time.perf_counter() - start) / block)
    for env in made.values():
        env.close()
    fast, slow = 1000 * float(np.median(times[True])), 1000 * float(np.median(times[False]))
    return {"render_fast_ms": round(fast, 2), "full_quality_ms": round(slow, 2), "speedup": round(slow / fast, 2)}


def collect_seconds(task: str, episodes: int, workers: int) -> dict:
    """Wall time of `collect_data.py` writing `episodes` pixel episodes of one task (default env settings)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
            collect_data.run(["--tasks", task, "--episodes", str(episodes), "--obs", "pixel", "--noise", "0.1",
                               "--workers", str(workers), "--out", out, "--progress", "False"])
        seconds = time.perf_counter() - start
    return {"episodes": episodes, "workers": workers, "seconds": round(seconds, 1),
            "policy_steps_per_s": round(episodes * 150 / seconds, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="metaworld_drawer_close")
    parser.add_argument("--steps", type=int, default=300, help="VecEnv steps timed per setting")
    parser.add_argument("--frames", type=int, default=200, help="frames timed per render setting")
    parser.add_argument("--episodes", type=int, default=10, help="pixel episodes collected per timing")
    parser.add_argument("--collect_workers", default="1,2", help="comma list of --workers values to time")
    parser.add_argument("--parts", default="vecenv,frame,collect", help="which measurements to run")
    args = parser.parse_args(argv)
    config = configs.load_config(["--obs", "pixel"])
    result = {"machine": machine(), "mujoco_gl": envs.select_gl_backend(config.mujoco_gl), "task": args.task,
              "settings": {k: config[k] for k in ("size", "action_repeat", "time_limit", "camera", "render_fast")}}
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"vecenv", "frame", "collect"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from vecenv, frame, collect")
    if "vecenv" in parts:
        vec = vec_throughput(config, args.task, (1, 2), args.steps)
        vec["ratio"] = round(vec["envs_2"]["policy_steps_per_s"] / vec["envs_1"]["policy_steps_per_s"], 2)
        ceiling = independent_ceiling(config, args.task, args.steps)
        ceiling["ratio"] = round(ceiling["policy_steps_per_s"] / vec["envs_1"]["policy_steps_per_s"], 2)
        vec["independent_2"] = ceiling
        result["vecenv"] = vec
    if "frame" in parts:
        result["frame"] = frame_ms(config, args.task, args.frames)
    if "collect" in parts:
        result["collect"] = [collect_seconds(args.task, args.episodes, int(w))
                             for w in args.collect_workers.split(",")]
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result)


if __name__ == "__main__":
    main()
