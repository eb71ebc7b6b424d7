"""The state-mode student loop (`metaworld_state`, reach), its execution variants side by side, as JSON.

    python bench/state_loop.py [--variants fp32,bf16] [--rounds 2] [--steps 600] [--updates 6] [--out f.json]

Variants (each runs the same code with one setting changed):
* `fp32`: the default (`--precision 32`);
* `bf16`: `--precision 16`, bf16 autocast of the world model and the imagination on a CPU with native bf16
  (AVX-512 BF16 / AMX; elsewhere it equals fp32);
* `compiled` / `compiled_bf16`: fp32 / bf16 with every MLP and the RSSM's one-step functions wrapped in `torch.compile` (inductor,
  `fallback_random` so the random stream is eager's). Not an option of the stage scripts: measured here to
  size what fusing the per-step ops would buy (its first compilation takes 35-51 s on a CPU, a few s with
  inductor's on-disk cache warm).

For every variant, in a fresh process per measurement (so peak RSS is its own), alternating variants for
`--rounds` rounds:
* `loop`: env steps per wall second and per process-CPU second of the real loop (`training.student.Trainer`,
  one torch thread): a random prefill of `--prefill` env steps, then `--steps` env steps of acting and
  training at the config's `train_every` (the random prefill is excluded from the rates);
* `parts`: median process-CPU seconds of one update (split into world model and behaviour) on a replay
  batch, one policy step and one env step.
CPU seconds barely move with other jobs' load, wall seconds do; the load average is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "bf16", "compiled", "compiled_bf16")
BLOCKS = ["defaults", "metaworld", "metaworld_state"]


def compile_agent(agent) -> None:
    """torch.compile every MLP of the agent and the RSSM's one-step functions, in place."""
    import torch
    import torch._inductor.config as inductor

    from models.networks import MLP

    inductor.fallback_random = True  # random ops as eager's: same stream, same samples
    for module in [*agent.wm.modules(), *agent.behavior.modules()]:
        if isinstance(module, MLP):
            module.forward = torch.compile(module.forward, dynamic=False)
    dynamics = agent.wm.dynamics
    dynamics.img_step = torch.compile(dynamics.img_step, dynamic=False)
    dynamics.obs_step = torch.compile(dynamics.obs_step, dynamic=False)


def variant_argv(variant: str) -> list[str]:
    return ["--precision", "16" if variant.endswith("bf16") else "32"]


def measure_parts(variant: str, updates: int) -> dict:
    """Median CPU seconds of an update (world model / behaviour), a policy step and an env step."""
    import numpy as np
    import torch

    import configs
    import envs
    from models.agent import Agent
    from bench.common import cpu_times, random_student_batch, update_times
    from models.world_model import obs_shapes_from

    config = configs.load_config(["--configs", *BLOCKS, "--task", "metaworld_reach", *variant_argv(variant)])
    shapes = obs_shapes_from(config)
    torch.manual_seed(0)
    agent = Agent(config, shapes, 4, "cpu")
    if variant.startswith("compiled"):
        compile_agent(agent)
    first, update, spent = update_times(agent, random_student_batch(config, shapes), updates, time.process_time)
    env = envs.VecEnv(config, config.task, 1, seed=0)
    try:
        obs = env.reset()
        state = [None]

        def act():
            _, state[0] = agent.policy(obs, state[0], training=True)

        act()
        policy = cpu_times(act, 50)
        action = np.zeros((1, 4), np.float32)
        step = cpu_times(lambda: env.step(action), 50)
    finally:
        env.close()
    median = statistics.median
    return {"update_cpu_s": round(median(update), 4), "behaviour_cpu_s": round(median(spent), 4),
            "world_model_cpu_s": round(median(update) - median(spent), 4), "first_update_wall_s": round(first, 1),
            "policy_step_cpu_ms": round(1e3 * median(policy), 3), "env_step_cpu_ms": round(1e3 * median(step), 3),
            "action_repeat": config.action_repeat}


def measure_loop(variant: str, prefill: int, steps: int) -> dict:
    """Env steps per wall / CPU second of the real loop after its random prefill."""
    import configs
    from training.student import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--configs", *BLOCKS, "--task", "metaworld_reach", "--logdir", tmp, "--progress", "False",
                "--prefill", str(prefill), "--prefill_updates", "0", "--steps", str(prefill + steps),
                "--eval_every", "0", "--eval_episodes", "1", "--checkpoint_every", "0", "--log_every", str(prefill + steps),
                "--threads", "1", *variant_argv(variant)]
        trainer = Trainer(configs.load_config(argv))
        try:
            if variant.startswith("compiled"):
                compile_agent(trainer.agent)
            marks = {}
            train_due = trainer.train_due

            def marked():
                # Clocked from the end of the first update to the end of the last: the prefill, the first
                # update (a compiled variant compiles there; its time is reported apart) and the final
                # evaluation are excluded, for every variant alike.
                updates, start = trainer.agent.updates, time.perf_counter()
                train_due()
                now = (time.perf_counter(), time.process_time(), trainer.step, trainer.agent.updates)
                if "start" in marks:
                    marks["end"] = now
                elif trainer.step >= prefill and trainer.agent.updates > updates:
                    marks["start"], marks["end"], marks["first"] = now, now, now[0] - start

            trainer.train_due = marked
            trainer.run()
            (wall0, cpu0, step0, updates0), (wall1, cpu1, step1, updates1) = marks["start"], marks["end"]
            wall, cpu, done, updates = wall1 - wall0, cpu1 - cpu0, step1 - step0, updates1 - updates0
        finally:
            trainer.close()
    return {"env_steps": done, "updates": updates, "env_steps_per_wall_s": round(done / wall, 2),
            "env_steps_per_cpu_s": round(done / cpu, 2), "first_update_wall_s": round(marks["first"], 1)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.what == "parts":
        out = measure_parts(args.variant, args.updates)
    else:
        out = measure_loop(args.variant, args.prefill, args.steps)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


def run_worker(what: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", what, "--variant", variant, "--updates", str(args.updates),
           "--prefill", str(args.prefill), "--steps", str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the worker imports envs, which sets a headless MUJOCO_GL
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{variant} {what} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """Per key: the median over rounds (peak RSS: the maximum), plus the per-round values of the rates."""
    row = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        row[key] = max(values) if key.startswith("peak") else round(statistics.median(values), 4)
        if key.startswith("env_steps_per") or key == "update_cpu_s":
            row[f"{key}_per_round"] = values
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="fp32,bf16", help=f"comma list of {VARIANTS}; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (processes per variant)")
    parser.add_argument("--prefill", type=int, default=1000, help="random env steps before the timed part")
    parser.add_argument("--steps", type=int, default=600, help="timed env steps of the loop (0: no loop)")
    parser.add_argument("--updates", type=int, default=6, help="timed updates of the parts measurement (0: none)")
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.worker:
        args.what = args.worker
        return worker(args)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    from bench.common import emit, machine

    kinds = [k for k, n in (("parts", args.updates), ("loop", args.steps)) if n > 0]
    result = {"machine": machine(), "blocks": BLOCKS, "task": "metaworld_reach", "threads": 1,
              "rounds": args.rounds, "prefill": args.prefill, "steps": args.steps, "updates": args.updates}
    raw = {k: {v: [] for v in variants} for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            for variant in variants:
                raw[kind][variant].append(run_worker(kind, variant, args))
    base = variants[0]
    for kind in kinds:
        rows = {v: summarise(raw[kind][v]) for v in variants}
        for v in variants[1:]:
            if kind == "loop":
                rows[v]["speedup_wall"] = round(rows[v]["env_steps_per_wall_s"] / rows[base]["env_steps_per_wall_s"], 2)
                rows[v]["speedup_cpu"] = round(rows[v]["env_steps_per_cpu_s"] / rows[base]["env_steps_per_cpu_s"], 2)
            else:
                rows[v]["update_speedup_cpu"] = round(rows[base]["update_cpu_s"] / rows[v]["update_cpu_s"], 2)
        result[kind] = rows
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result, args.out)


if __name__ == "__main__":
    main()
