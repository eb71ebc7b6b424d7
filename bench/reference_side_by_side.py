"""Teacher-pretraining updates, ours against the public reference implementation, side by side.

    python bench/reference_side_by_side.py                          # ours only
    python bench/reference_side_by_side.py --ref /path/to/reference # ours and the reference, ratios

`--ref` is a checkout of the reference code (not part of this repository, never committed); it is
imported unchanged in its own process. Every measurement runs in a fresh process (so its peak RSS
is its own), the processes alternate reference/ours for `--rounds` rounds, and the figures are
medians over rounds. One update = world-model loss, backward, gradient clipping, Adam step at 64x64
images, cnn_depth 32, K = N = 6 and random data (speed does not depend on the values); the
reference's update also trains its action VAE, as its pretraining loop does.

Shape legend: B batch, T sequence length, K source tasks, N experts.
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
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
A = 4
CASES = {  # name: (batch, length, threads)
    "teacher_8x50_2t": (8, 50, 2),
    "teacher_8x50_1t": (8, 50, 1),
    "teacher_16x50_1t": (16, 50, 1),
    "teacher_16x50_2t": (16, 50, 2),
}
# glibc returns freed blocks above the mmap threshold to the OS on every free; a fixed threshold keeps
# the update's large activations reusable between updates. Both implementations get the same setting.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def random_batch(b: int, t: int, k: int) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from bench.common import random_teacher_batch

    return random_teacher_batch(b, t, k, np.random.default_rng(0), A)


def teacher_update(device="cpu", batch: int = 8, length: int = 50, k: int = 6, n: int = 6,
                   expert_path: str | None = None, precision: int = 32):
    """One of our teacher-pretraining updates as a closure (the pretraining loop's steps, without
    logging), on a random mixed-task batch. `expert_path` forces the MoE expert execution
    (None: the per-device/batch choice). Returns (step, model)."""
    import torch

    sys.path.insert(0, str(ROOT))
    import configs
    from models import TeacherWorldModel

    config = configs.load_config(["--configs", "defaults", "metaworld"])
    config.update(batch_size=batch, batch_length=length, cnn_depth=32, n_experts=n, precision=precision,
                  source_tasks=[f"task{i}" for i in range(k)])
    torch.manual_seed(0)
    model = TeacherWorldModel(config, A).to(device)
    if expert_path is not None:
        model.encoder.conv.path = expert_path
    optimizer = torch.optim.Adam(model.parameters(), lr=config.model_lr, eps=config.model_eps)
    data = model.preprocess(random_batch(batch, length, k))
    model.train()

    def step():
        weighted, _, _ = model.task_losses(data)
        optimizer.zero_grad(set_to_none=True)
        weighted.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.model_grad_clip)
        optimizer.step()

    return step, model


def reference_teacher_update(ref: str, device="cpu", batch: int = 8, length: int = 50, k: int = 6):
    """The reference's pretraining update (`WorldModelTeacher._train` on one task's batch, as its
    loop calls it), built from its own configs (defaults metaworld metaworld_teacher_moe_pretrain)."""
    import types

    import torch
    from ruamel.yaml import YAML

    sys.path.insert(0, str(pathlib.Path(ref).resolve()))
    import models_pretrain  # the reference's module
    import tools as ref_tools

    blocks = YAML(typ="safe").load((pathlib.Path(ref) / "configs.yaml").read_text())
    values = {}
    for name in ("defaults", "metaworld", "metaworld_teacher_moe_pretrain"):
        values.update(blocks[name])
    values = {key: ref_tools.args_type(value)(value) for key, value in values.items()}
    values.update(batch_size=batch, batch_length=length, num_actions=A, device=str(device),
                  num_teachers=k, n_experts=6, source_tasks=[f"task{i}" for i in range(k)])
    values["act"] = getattr(torch.nn, values["act"])
    config = types.SimpleNamespace(**values)
    torch.manual_seed(0)
    model = models_pretrain.WorldModelTeacher(0, config, None).to(device)
    data = random_batch(batch, length, k)
    data.pop("task")
    counter = [0]

    def step():
        counter[0] += 1
        model._train(dict(data), task_id=counter[0] % k)

    return step, model


CPU_SECONDS: list[float] = []  # process CPU seconds of the last `time_calls` repetitions


def time_calls(step, device, warmup: int, reps: int) -> list[float]:
    """Wall seconds of `reps` calls after `warmup` untimed ones."""
    import torch

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU_SECONDS[:] = cpu
    return times


def worker(args) -> None:
    """One measurement in this process: print {sec, peak_rss_gib} as JSON."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.impl == "ref":
        step, _ = reference_teacher_update(args.ref, "cpu", args.batch, args.length)
    else:
        step, _ = teacher_update("cpu", args.batch, args.length, expert_path=args.expert_path,
                                 precision=args.precision)
    times = time_calls(step, "cpu", args.warmup, args.reps)
    print(json.dumps({"sec": times, "cpu_sec": list(CPU_SECONDS), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def run_worker(impl: str, case: str, args) -> dict:
    batch, length, threads = CASES[case]
    cmd = [sys.executable, __file__, "--worker", impl, "--batch", str(batch), "--length", str(length),
           "--threads", str(threads), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    if impl == "ref":
        cmd += ["--ref", args.ref]
    elif impl == "ours:bf16":
        cmd += ["--precision", "16"]
    elif impl.startswith("ours:"):
        cmd += ["--expert_path", impl.split(":", 1)[1]]
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{impl} worker failed on {case}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="", help="checkout of the reference implementation (optional)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {sorted(CASES)}")
    parser.add_argument("--variants", default="ours", help="comma list: ours (our choice, float32), ours:grouped, "
                        "ours:separate, ours:bf16 (--precision 16: bf16 autocast on a CPU with native bf16)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (processes per variant and case)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--expert_path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--precision", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.impl = args.worker
        return worker(args)
    if args.ref and not (pathlib.Path(args.ref) / "models_pretrain.py").is_file():
        raise SystemExit(f"--ref {args.ref}: no models_pretrain.py there; point it at the reference checkout")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; valid: {sorted(CASES)}")
    sys.path.insert(0, str(ROOT))
    from bench.common import emit, machine

    impls = (["ref"] if args.ref else []) + [v for v in args.variants.split(",") if v]
    result = {"machine": machine(), "malloc_env": MALLOC_ENV, "rounds": args.rounds, "warmup": args.warmup,
              "reps": args.reps, "cases": {}}
    raw = {c: {i: [] for i in impls} for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            for impl in impls:
                raw[case][impl].append(run_worker(impl, case, args))
    for case in cases:
        row = {}
        for impl in impls:
            runs = raw[case][impl]
            row[impl] = {"sec": round(statistics.median([statistics.median(r["sec"]) for r in runs]), 3),
                         "cpu_sec": round(statistics.median([statistics.median(r["cpu_sec"]) for r in runs]), 3),
                         "peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs), 2),
                         "sec_per_round": [round(statistics.median(r["sec"]), 3) for r in runs]}
        if args.ref:
            for impl in impls[1:]:
                row[f"speedup_{impl}"] = round(row["ref"]["sec"] / row[impl]["sec"], 2)
                row[f"cpu_speedup_{impl}"] = round(row["ref"]["cpu_sec"] / row[impl]["cpu_sec"], 2)
        result["cases"][case] = row
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result, args.out)


if __name__ == "__main__":
    main()
