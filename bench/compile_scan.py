"""`--compile True` against eager, side by side in one process: CPU seconds per teacher and student update, and
the compilation time, as JSON.

    python bench/compile_scan.py [--cases teacher,student_plain,student_distill] [--blocks defaults,metaworld,metaworld_state]
                                 [--k 4] [--rounds 3] [--reps 3] [--cold] [--out f.json]

Each case is built twice from the same seed, eager and compiled (`models.world_model.compile_model`: the
convolutions and the RSSM's observe/imagine steps; for a distilling student the frozen teacher too):
* `teacher`: one pretraining update of a K-task MoE teacher (loss on a mixed-task batch, backward, clipping,
  Adam), the update `training.teacher.TeacherTrainer.update` makes;
* `student_plain` / `student_distill`: `Agent.train` (world model [+ comet distillation from a random K-task
  teacher, all views active], imagination, actor, critic).
The first update of each is timed in wall seconds (for the compiled one this is the compilation; the
difference to eager's first update is reported as `compile_s`); then eager and compiled alternate for
`--rounds` rounds of `--reps` updates each (the order flips every round, so a change of load hits both), and
the median process CPU seconds per update (one torch thread) give the ratio eager / compiled. `--cold` uses a
fresh, empty inductor cache (the first compilation of a process on a new machine); by default the cache
under $TORCHINDUCTOR_CACHE_DIR (/tmp/torchinductor_$USER) is used as found, and the JSON says whether it held
anything before.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("teacher", "student_plain", "student_distill")
A = 4


def teacher_update(config, k: int, device, compiled: bool):
    """A fresh K-task teacher with its Adam, and a thunk making one pretraining update on a fixed random batch."""
    import numpy as np
    import torch

    from bench.common import random_student_batch
    from models import TeacherWorldModel, compile_model

    config = {**config, "source_tasks": [f"metaworld_task{i}" for i in range(k)], "n_experts": k,
              "teacher_encoder_mode": "moe"}
    torch.manual_seed(0)
    model = TeacherWorldModel(config, A).to(device)
    if compiled:
        compile_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["model_lr"], eps=config["model_eps"])
    batch = random_student_batch(config, model.obs_shapes)
    batch["task"] = np.arange(config["batch_size"]) % k
    data = model.preprocess(batch)

    def update():
        weighted, _, _ = model.task_losses(data)
        optimizer.zero_grad(set_to_none=True)
        weighted.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["model_grad_clip"])
        optimizer.step()

    return update


def student_update(config, k: int | None, device, compiled: bool):
    """A fresh student (plain, or distilling from a random K-task comet teacher) and a thunk making one update."""
    from bench.common import random_student_batch, student_agent
    from models.agent import compile_agent

    agent, _ = student_agent(config, k, device=device)
    if compiled:
        compile_agent(agent)
    batch = random_student_batch(config, agent.wm.obs_shapes)
    steps = iter(range(10 ** 9))
    return lambda: agent.train(batch, next(steps))


def build(case: str, config, k: int, device, compiled: bool):
    if case == "teacher":
        return teacher_update(config, k, device, compiled)
    return student_update(config, k if case == "student_distill" else None, device, compiled)


def measure(case: str, config, k: int, device, rounds: int, reps: int) -> dict:
    """First-update wall seconds and median CPU seconds per update, eager and compiled, alternating."""
    from bench.common import cpu_times

    updates, first = {}, {}
    for variant in ("eager", "compiled"):
        updates[variant] = build(case, config, k, device, variant == "compiled")
        start = time.perf_counter()
        updates[variant]()
        first[variant] = time.perf_counter() - start
    cpu = {"eager": [], "compiled": []}
    for r in range(rounds):
        for variant in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            cpu[variant] += cpu_times(updates[variant], reps)
    median = {v: statistics.median(s) for v, s in cpu.items()}
    return {"eager_cpu_s": round(median["eager"], 4), "compiled_cpu_s": round(median["compiled"], 4),
            "eager_over_compiled": round(median["eager"] / median["compiled"], 3),
            "first_update_wall_s": {v: round(s, 2) for v, s in first.items()},
            "compile_s": round(first["compiled"] - first["eager"], 1), "timed_updates_each": len(cpu["eager"]),
            "spread_cpu_s": {v: [round(min(s), 4), round(max(s), 4)] for v, s in cpu.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--blocks", default="defaults,metaworld,metaworld_state", help="config blocks of every case")
    parser.add_argument("--k", type=int, default=4, help="source tasks (and experts) of the teachers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="updates per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="compile into a fresh, empty inductor cache")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
    import torch

    import configs
    from bench.common import emit, machine
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    blocks = [b.strip() for b in args.blocks.split(",")]
    config = configs.load_config(["--configs", *blocks])
    cache = pathlib.Path(cache_dir())
    result = {"machine": machine(), "blocks": blocks, "batch": [config.batch_size, config.batch_length],
              "obs": config.obs, "k": args.k, "imag_horizon": config.imag_horizon, "threads": args.threads,
              "inductor_cache": {"dir": str(cache), "held_files_before": any(cache.rglob("*"))}}
    for case in cases:
        result[case] = measure(case, config, args.k, torch.device("cpu"), args.rounds, args.reps)
        print(f"[compile_scan] {case}: {result[case]}", file=sys.stderr, flush=True)
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result, args.out)


if __name__ == "__main__":
    main()
