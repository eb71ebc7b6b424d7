"""Student throughput, printed as one JSON object.

    python bench/student_step.py [--threads 0] [--pixel_updates 3] [--state_updates 10] [--loop_steps 3000]

* updates/s of `Agent.train` (world model + behavior, no distillation) at the paper pixel config
  (batch 50x50, 64x64 images, cnn_depth 32) and at the `metaworld_state` config, on random batches
  (cost does not depend on the values); the split between world model and behavior is reported too;
* env steps/s of the real training loop (`training.student.Trainer`, metaworld_state, reach): random
  prefill, and with the agent acting and training at the config's train_every.

Timings are medians over the measured updates after one warm-up update. CPU load is sampled before and
after, since other jobs may share the machine.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from envs import headless_gl  # noqa: E402

headless_gl()  # before torch, and anything that imports mujoco

import torch  # noqa: E402

import configs  # noqa: E402
from bench.common import emit, machine, random_student_batch, update_times  # noqa: E402


def time_updates(blocks: list[str], updates: int) -> dict:
    """Median seconds of a full update and of its world-model and behavior parts."""
    from models.agent import Agent
    from models.world_model import obs_shapes_from

    config = configs.load_config(["--configs", *blocks])
    shapes = obs_shapes_from(config)
    agent = Agent(config, shapes, 4, "cpu")
    _, totals, behaviours = update_times(agent, random_student_batch(config, shapes), updates, time.perf_counter)
    total, behavior = statistics.median(totals), statistics.median(behaviours)
    return {"blocks": blocks, "batch": [config["batch_size"], config["batch_length"]], "obs": config["obs"],
            "updates": updates, "updates_per_s": round(1 / total, 4), "update_s": round(total, 4),
            "world_model_s": round(total - behavior, 4), "behavior_s": round(behavior, 4),
            "imag_horizon": config["imag_horizon"]}


def loop_throughput(steps: int, threads: int) -> dict:
    """Env steps/s of the real loop on reach (metaworld_state): prefill, then acting + training."""
    from training.student import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        prefill = 1200
        argv = ["--configs", "defaults", "metaworld", "metaworld_state", "--task", "metaworld_reach",
                "--logdir", tmp, "--progress", "False", "--prefill", str(prefill), "--prefill_updates", "0",
                "--steps", str(prefill + steps), "--log_every", "600", "--eval_every", "0",
                "--eval_episodes", "1", "--checkpoint_every", "0", "--threads", str(threads)]
        config = configs.load_config(argv)
        trainer = Trainer(config)
        try:
            trainer.run()
        finally:
            trainer.close()
        lines = [json.loads(line) for line in (pathlib.Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    fps = [(r["step"], r["perf/fps"]) for r in lines if "perf/fps" in r]
    random_fps = [f for s, f in fps if s <= prefill]
    # Intervals after the first post-prefill one (which holds the replay's first full windows).
    train_fps = [f for s, f in fps if s > prefill + 600]
    return {"task": "metaworld_reach", "blocks": ["defaults", "metaworld", "metaworld_state"],
            "train_every": config.train_every, "action_repeat": config.action_repeat,
            "env_steps_per_s_random_prefill": round(statistics.median(random_fps), 1) if random_fps else None,
            "env_steps_per_s_training": round(statistics.median(train_fps), 1) if train_fps else None,
            "measured_env_steps": steps}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--pixel_updates", type=int, default=3)
    parser.add_argument("--state_updates", type=int, default=10)
    parser.add_argument("--loop_steps", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"machine": machine()}
    start = time.time()
    result["pixel_paper"] = time_updates(["defaults", "metaworld"], args.pixel_updates)
    result["state_small"] = time_updates(["defaults", "metaworld", "metaworld_state"], args.state_updates)
    if args.loop_steps > 0:
        result["loop"] = loop_throughput(args.loop_steps, args.threads)
    result["load_avg_end"] = machine()["load_avg"]
    result["wall_s"] = round(time.time() - start, 1)
    emit(result)


if __name__ == "__main__":
    main()
