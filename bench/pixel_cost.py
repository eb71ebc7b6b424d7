"""CPU cost of candidate small pixel configurations (64x64 frames): what one student run would take.

    python bench/pixel_cost.py [--threads 1] [--reps 3] [--steps 100000] [--only small16,small8]

Per candidate: seconds per student update, plain and distilling from a K-task comet teacher, and per
teacher pretraining update (process CPU time, one torch thread: a shared machine's load barely moves it,
unlike wall time); one policy step; one env step with its 64x64 frame (real env, random actions). The
projection of one run of `--steps` env steps is

    steps / train_every * update  +  steps * env_step  +  steps / action_repeat * policy_step

(the random prefill has no policy or update cost; it is counted as acting, which over-states it slightly).
Random batches and randomly initialised models: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import configs  # noqa: E402
from bench import device_speed  # noqa: E402
from bench.common import emit, machine  # noqa: E402

SMALL_DYN = ["--dyn_stoch", "32", "--dyn_deter", "128", "--dyn_hidden", "128", "--mlp_units", "128"]
# name: (config overrides on `defaults metaworld`, teacher experts = source tasks[, blocks instead])
CANDIDATES = {
    "paper": ([], 6),
    "small32": (["--batch_size", "16", *SMALL_DYN], 3),
    "small16": (["--cnn_depth", "16", "--batch_size", "16", *SMALL_DYN], 3),
    "small16_b16x32": (["--cnn_depth", "16", "--batch_size", "16", "--batch_length", "32", *SMALL_DYN], 3),
    "small8": (["--cnn_depth", "8", "--batch_size", "16", *SMALL_DYN], 3),
    "small8_b8": (["--cnn_depth", "8", "--batch_size", "8", *SMALL_DYN], 3),
    # the committed CPU pixel protocol (docs/benchmarks.md, "A pixel protocol that learns on a CPU")
    "pixel_cpu": ([], 4, ["defaults", "metaworld", "metaworld_pixel_cpu"]),
}
BLOCKS = ["defaults", "metaworld"]


def env_step_cost(config, policy_steps: int) -> float:
    """CPU seconds per env step of the real pixel env stack (time limit, action repeat, 64x64 render)."""
    import envs

    env = envs.make_env(config, config.task, seed=0)
    rng = np.random.default_rng(0)
    obs = env.reset()
    start = time.process_time()
    for _ in range(policy_steps):
        obs = env.step(rng.uniform(-1, 1, envs.ACTION_DIM).astype(np.float32))
        if obs["is_last"]:
            obs = env.reset()
    seconds = time.process_time() - start
    env.close()
    return seconds / (policy_steps * config.action_repeat)


def teacher_spec(config, k: int) -> dict:
    keys = ("batch_size", "batch_length", "cnn_depth", "dyn_stoch", "dyn_deter", "dyn_hidden", "mlp_units")
    return {"k": k, "n": k, **{key: config[key] for key in keys}}


def candidate(name: str, reps: int, steps: int, env_cost: float) -> dict:
    overrides, k, blocks = (*CANDIDATES[name], BLOCKS)[:3]
    cpu = torch.device("cpu")
    config = configs.load_config(["--configs", *blocks, *overrides])
    plain = device_speed.student_update(blocks, None, cpu, "fp32", 1, reps, overrides)
    distill = device_speed.student_update(blocks, k, cpu, "fp32", 1, reps, overrides)
    teacher = device_speed.teacher_update(teacher_spec(config, k), cpu, "fp32", 1, reps)
    policy = device_speed.policy_latency(blocks, cpu, "fp32", 20, overrides)
    updates = steps / config.train_every
    acting = steps * env_cost + steps / config.action_repeat * policy["sec_median"]
    hours = {arm: round((updates * part["cpu_sec_per_update"] + acting) / 3600, 2)
             for arm, part in (("plain", plain), ("distill", distill))}
    return {"overrides": overrides, "k": k, "batch": [config.batch_size, config.batch_length],
            "cnn_depth": config.cnn_depth, "train_every": config.train_every,
            "student_plain_cpu_s": round(plain["cpu_sec_per_update"], 3),
            "student_distill_cpu_s": round(distill["cpu_sec_per_update"], 3),
            "teacher_update_cpu_s": round(teacher["cpu_sec_per_update"], 3),
            "policy_step_s": round(policy["sec_median"], 4), "run_env_steps": steps,
            "run_hours_one_core": hours,
            "teacher_hours_per_10k_updates": round(1e4 * teacher["cpu_sec_per_update"] / 3600, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed updates per measurement (after one warm-up)")
    parser.add_argument("--steps", type=int, default=100_000, help="env steps of the projected run")
    parser.add_argument("--only", default="", help="comma list of candidates (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"--only: unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
    config = configs.load_config(["--configs", *BLOCKS])
    result = {"machine": machine(), "threads": args.threads}
    result["env_step_cpu_s"] = round(env_step_cost(config, 300), 5)
    result["candidates"] = {n: candidate(n, args.reps, args.steps, result["env_step_cpu_s"]) for n in names}
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result)


if __name__ == "__main__":
    main()
