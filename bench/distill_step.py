"""Cost of a distillation update, printed as one JSON object from one run.

    python bench/distill_step.py                  # paper pixel config: batch 50x50, 64x64, cnn_depth 32
    python bench/distill_step.py --quick          # tiny sizes, a smoke test of the script itself
    python bench/distill_step.py --blocks metaworld_pixel_cpu   # the sizes of a config block instead

Measures the student's full update (`Agent.train`: world model + distiller + behavior) for
  plain          no distillation,
  k6             comet with K=6 source tasks, all active, default config (`teacher_precision: auto`:
                 the teacher's encoder in bf16 where the hardware has native bf16; the JSON says which),
  k6_fp32        k6 with the teacher entirely in float32 (`teacher_precision: 32`),
  k12_p3         comet with K=12 source tasks pruned to 3 active,
  k6_p3          comet with K=6 source tasks pruned to 3 active,
  k6_b25         k6 distilling on 25 of the 50 sequences (`distill_batch: 25`),
  k6_prior       k6 matching one-step transition predictions (`distill_target: prior`),
  k6_open_loop   k6 matching 5-step open-loop predictions (`distill_target: open_loop`, `distill_horizon` 5),
  k6_share       k6 with the gradient share measured at every update (`grad_share_every: 1`; every other
                 variant measures none, so k6_share - k6 is the cost of one measurement),
and reports each variant's time relative to plain (target for k6: <= 1.5 on a CPU) and k12_p3/k6_p3
(target <= 1.1: after pruning the cost must not depend on K). Teachers are randomly initialised:
timing does not depend on the weights. The pruned states are set directly with
`TeacherMethod.set_active` (the same state pruning reaches). The variants are timed round-robin after a
warm-up, so a change of machine load hits all of them alike; medians are reported. On a CPU the ratios
use process CPU time (one torch thread), which a shared machine's load barely changes, while wall time
swings with it; both are printed. Time spent inside `world_model_loss` (mostly the teacher's forward
pass) is reported separately.

Shape legend: B batch, T time, A action size.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import configs  # noqa: E402
import tools  # noqa: E402
from bench.common import emit, machine, student_agent  # noqa: E402

A = 4


def make_batch(config, rng: np.random.Generator) -> dict:
    """A random (B, T) batch in the episode format (content does not change the cost)."""
    b, t = config["batch_size"], config["batch_length"]
    batch = {"action": rng.uniform(-1, 1, (b, t, A)).astype(np.float32),
             "reward": rng.uniform(0, 1, (b, t)).astype(np.float32),
             "discount": np.ones((b, t), np.float32), "is_first": np.zeros((b, t), bool),
             "is_terminal": np.zeros((b, t), bool)}
    batch["is_first"][:, 0] = True
    if config["obs"] in ("pixel", "both"):
        batch["image"] = rng.integers(0, 256, (b, t, *config["size"], 3), dtype=np.uint8)
    if config["obs"] in ("state", "both"):
        batch["state"] = rng.normal(size=(b, t, 39)).astype(np.float32)
    return batch


class TimedDistiller:
    """Wraps a distiller's `loss` to accumulate the CPU time spent in it."""

    def __init__(self, distiller):
        self.distiller, self.seconds = distiller, 0.0
        self._loss = distiller.world_model_loss
        distiller.world_model_loss = self._timed

    def _timed(self, *args, **kwargs):
        start = time.process_time()
        out = self._loss(*args, **kwargs)
        self.seconds += time.process_time() - start
        return out


def build(config, k: int | None, active: int | None, device, seed: int, **overrides):
    """`bench.common.student_agent` with the distiller's `world_model_loss` timed (TimedDistiller, None
    without a distiller)."""
    agent, distiller = student_agent(config, k, active, device, seed, A, **overrides)
    return agent, (TimedDistiller(distiller) if distiller is not None else None)


VARIANTS = {
    "plain": (None, None, {}),
    "k6": (6, None, {}),
    "k12_p3": (12, 3, {}),
    "k6_p3": (6, 3, {}),
    "k6_fp32": (6, None, {"teacher_precision": 32}),
    "k6_b25": (6, None, {"distill_batch": 25}),
    "k6_prior": (6, None, {"distill_target": "prior"}),
    "k6_open_loop": (6, None, {"distill_target": "open_loop", "distill_horizon": 5}),
    "k6_share": (6, None, {"grad_share_every": 1}),
}


def time_updates(agents: dict, batches: list, warmup: int, updates: int, device) -> tuple[dict, dict, dict]:
    """Per variant, the wall seconds, process CPU seconds (what the update costs, whatever the load) and seconds
    inside the distillation loss of each timed update, after `warmup` untimed ones."""
    times, cpu, inside = ({name: [] for name in agents} for _ in range(3))
    for i in range(warmup + updates):
        for name, (agent, timer) in agents.items():  # round-robin: load changes hit every variant
            if timer is not None:
                timer.seconds = 0.0
            start, start_cpu = time.perf_counter(), time.process_time()
            agent.train(batches[i % len(batches)], step=i)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if i >= warmup:
                times[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
                inside[name].append(timer.seconds if timer is not None else 0.0)
            print(f"[bench] update {i} {name}: {elapsed:.2f}s wall, {elapsed_cpu:.2f}s cpu", file=sys.stderr,
                  flush=True)
    return times, cpu, inside


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per variant (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    parser.add_argument("--blocks", default="", help="config blocks after defaults and metaworld (comma list), "
                                                     "e.g. metaworld_pixel_cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blocks = ["defaults", "metaworld", *filter(None, args.blocks.split(","))] + (["debug"] if args.quick else [])
    # No gradient-share measurement unless a variant asks for one: every other variant times the same update.
    config = configs.load_config(["--configs", *blocks, "--device", args.device, "--grad_share_every", "0"])
    device = tools.get_device(args.device)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    assert not unknown and "plain" in names, f"variants must include plain and come from {list(VARIANTS)}: {unknown}"
    variants = {name: VARIANTS[name] for name in names}
    agents = {name: build(config, k, active, device, 0, **extra) for name, (k, active, extra) in variants.items()}
    rng = np.random.default_rng(0)
    batches = [make_batch(config, rng) for _ in range(2)]
    before = machine(device)
    times, cpu, inside = time_updates(agents, batches, args.warmup, args.updates, device)
    # On a CPU the ratios use process CPU time (with one torch thread it does not include time the
    # process waited for a core on a shared machine); on CUDA, wall time.
    basis = cpu if device.type == "cpu" else times
    median = {name: statistics.median(v) for name, v in basis.items()}
    result = {
        "bench": "distill_step",
        "config": {"blocks": blocks, "batch_size": config["batch_size"], "batch_length": config["batch_length"],
                   "size": config["size"], "dyn_deter": config["dyn_deter"], "dyn_stoch": config["dyn_stoch"],
                   "cnn_depth": config["cnn_depth"], "n_experts": config["n_experts"], "obs": config["obs"],
                   "device": str(device), "quick": args.quick},
        "machine_before": before, "machine_after": machine(device),
        "warmup": args.warmup, "updates": args.updates,
        "ratio_basis": "process CPU seconds" if device.type == "cpu" else "wall seconds",
        "update_wall_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "update_cpu_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "median_update_s": {k: round(v, 3) for k, v in median.items()},
        "median_distill_loss_cpu_s": {k: round(statistics.median(v), 3) for k, v in inside.items() if k != "plain"},
        "ratio_vs_plain": {k: round(v / median["plain"], 3) for k, v in median.items() if k != "plain"},
        "ratio_k12_pruned3_vs_k6_pruned3": (round(median["k12_p3"] / median["k6_p3"], 3)
                                            if {"k12_p3", "k6_p3"} <= set(median) else None),
        "teacher_bf16": {k: timer.distiller.teacher_bf16(device) for k, (_, timer) in agents.items()
                         if timer is not None},
        "targets": {"ratio_vs_plain k6": 1.5, "ratio_k12_pruned3_vs_k6_pruned3": 1.1},
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
