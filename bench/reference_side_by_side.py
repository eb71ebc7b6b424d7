"""World-model and student updates, ours against the public reference implementation, side by side.

    python bench/reference_side_by_side.py                          # ours only
    python bench/reference_side_by_side.py --ref /path/to/reference # ours and the reference, ratios
    python bench/reference_side_by_side.py --quick                  # every case at 2x8 (smoke test)

`--ref` is a checkout of the reference code (not part of this repository, never committed); it is
imported unchanged in its own process. Every measurement runs in a fresh process (so its peak RSS
is its own), the processes alternate reference/ours for `--rounds` rounds, and the figures are
medians over rounds. Both sides: 64x64 images, cnn_depth 32, K = N = 6, random data (speed does not
depend on the values), the same batch, the paper sizes otherwise. What one update is, per case kind:

* teacher: ours, the pretraining loop's step (mixed-task batch, `task_losses`, backward, clipping, Adam);
  the reference's, `WorldModelTeacher._train` on one task's batch (as its pretraining loop calls it),
  which also trains its action VAE.
* student_wm (no distillation): ours, `Agent.train_world_model` (preprocessing, world-model loss,
  backward, clipping, Adam); the reference's, `models_nodistill.WorldModelStudent._train` (the same
  steps, through its AMP optimizer wrapper, which is a no-op on a CPU).
* student_full (no distillation): the world-model update above, then one actor and one critic update
  in imagination (horizon 15) from its posterior states: ours `Agent.train`; the reference's, its
  world model's `_train` followed by `models_nodistill.ImagBehavior._train` with the reward-head
  objective, as `DreamerDistill._train` composes them (dreamer_distill.py itself is not imported: it
  needs gym and tensorflow for its envs and exploration, which its update does not use). Our
  actor and critic are smaller (2 layers of 400 units; the reference's actor has 4 and its value 3),
  so this ratio is partly model size: `param_counts` in the output gives both sides' sizes.
* distill_wm: the student world-model update with the distillation loss from a randomly initialised
  K-task MoE teacher (frozen): ours, `Agent.train_world_model` with the comet method attached
  (teacher_precision from the config: `auto`, i.e. the teacher's encoder in bf16 where the CPU has
  native bf16; variant `ours:teacher32` keeps it float32); the reference's,
  `models_distill.WorldModelStudent._train` (every teacher view encoded on its own, relevance
  network, distiller, student heads), built from its configs with the teacher sizes its pretraining
  config gives.

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
UPDATES = ("teacher", "student_wm", "student_full", "distill_wm")
CASES = {  # name: (update, batch, length, threads)
    "teacher_8x50_2t": ("teacher", 8, 50, 2),
    "teacher_8x50_1t": ("teacher", 8, 50, 1),
    "teacher_16x50_1t": ("teacher", 16, 50, 1),
    "teacher_16x50_2t": ("teacher", 16, 50, 2),
    "student_wm_8x50_2t": ("student_wm", 8, 50, 2),
    "student_full_8x50_2t": ("student_full", 8, 50, 2),
    "distill_wm_8x50_2t": ("distill_wm", 8, 50, 2),
    "distill_wm_16x50_1t": ("distill_wm", 16, 50, 1),
}
QUICK_SIZE = (2, 8)  # --quick: every case at this batch x length
EXPERT_UPDATES = {"teacher", "distill_wm"}  # updates that run a MoE encoder (ours: the expert execution choice)
VARIANTS = {  # name: (worker flags, updates it applies to)
    "ours": ([], set(UPDATES)),
    "ours:grouped": (["--expert_path", "grouped"], EXPERT_UPDATES),
    "ours:separate": (["--expert_path", "separate"], EXPERT_UPDATES),
    "ours:bf16": (["--precision", "16"], set(UPDATES)),
    "ours:teacher32": (["--teacher_precision", "32"], {"distill_wm"}),
}
# glibc returns freed blocks above the mmap threshold to the OS on every free; a fixed threshold keeps
# the update's large activations reusable between updates. Both implementations get the same setting.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def random_batch(b: int, t: int, k: int, task: bool = True) -> dict:
    """The (B, T) batch both sides get; `task` False drops the task ids (student updates)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from bench.common import random_teacher_batch

    batch = random_teacher_batch(b, t, k, np.random.default_rng(0), A)
    if not task:
        batch.pop("task")
    return batch


def teacher_update(device="cpu", batch: int = 8, length: int = 50, k: int = 6, n: int = 6,
                   expert_path: str | None = None, precision: int = 32):
    """One of our teacher-pretraining updates as a closure (the pretraining loop's steps, without
    logging), on a random mixed-task batch. `expert_path` forces the MoE expert execution
    (None: the per-device/batch choice). Returns (step, {part: trainable parameters})."""
    import torch

    sys.path.insert(0, str(ROOT))
    from models import TeacherWorldModel

    config = our_config(batch, length, precision)
    config.update(n_experts=n, source_tasks=[f"task{i}" for i in range(k)])
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

    return step, {"world_model": count(model.parameters())}


def our_config(batch: int, length: int, precision: int = 32):
    """Our pixel config (defaults metaworld) at this batch, cnn_depth 32."""
    sys.path.insert(0, str(ROOT))
    import configs

    config = configs.load_config(["--configs", "defaults", "metaworld"])
    config.update(batch_size=batch, batch_length=length, cnn_depth=32, precision=precision)
    return config


def student_update(update: str, device="cpu", batch: int = 8, length: int = 50, k: int = 6, n: int = 6,
                   precision: int = 32, teacher_precision: str | None = None, expert_path: str | None = None):
    """One of our student updates (`update` student_wm, student_full or distill_wm, see the module
    docstring) as a closure on a random batch; distill_wm distils from a random K-task, N-expert teacher.
    Returns (step, {part: trainable parameters})."""
    import itertools

    sys.path.insert(0, str(ROOT))
    from bench.common import student_agent

    config = our_config(batch, length, precision)
    config.update(n_experts=n)
    overrides = {} if teacher_precision is None else {"teacher_precision": teacher_precision}
    agent, distiller = student_agent(config, k if update == "distill_wm" else None, device=device, act_dim=A,
                                     **overrides)
    if expert_path is not None:
        distiller.teacher.encoder.conv.path = expert_path
    data = random_batch(batch, length, k, task=False)
    train = agent.train if update == "student_full" else agent.train_world_model
    updates = itertools.count()

    def step():
        train(data, next(updates))

    parts = {"world_model": count(agent.wm.parameters())}
    if distiller is not None:
        parts["distiller"] = count(p for p in distiller.parameters() if p.requires_grad)
    if update == "student_full":
        parts.update(actor=count(agent.behavior.actor.parameters()), critic=count(agent.behavior.critic.parameters()))
    return step, parts


def count(params) -> int:
    """Number of distinct parameter values."""
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def reference_config(ref: str, blocks: tuple[str, ...], **values):
    """The reference's config from its own configs.yaml blocks, typed as its command line types them, with
    `values` set; an argparse.Namespace, as its scripts get."""
    import argparse

    import torch
    from ruamel.yaml import YAML

    sys.path.insert(0, str(pathlib.Path(ref).resolve()))
    import tools as ref_tools  # the reference's module

    yaml_blocks = YAML(typ="safe").load((pathlib.Path(ref) / "configs.yaml").read_text())
    merged = {}
    for name in blocks:
        merged.update(yaml_blocks[name])
    merged = {key: ref_tools.args_type(value)(value) for key, value in merged.items()}
    merged.update(values)
    merged["act"] = getattr(torch.nn, merged["act"])
    return argparse.Namespace(**merged)


def reference_teacher_update(ref: str, device="cpu", batch: int = 8, length: int = 50, k: int = 6):
    """The reference's pretraining update (`WorldModelTeacher._train` on one task's batch, as its
    loop calls it), built from its own configs (defaults metaworld metaworld_teacher_moe_pretrain)."""
    import torch

    config = reference_config(ref, ("defaults", "metaworld", "metaworld_teacher_moe_pretrain"),
                              batch_size=batch, batch_length=length, num_actions=A, device=str(device),
                              num_teachers=k, n_experts=6, source_tasks=[f"task{i}" for i in range(k)])
    import models_pretrain  # the reference's module

    torch.manual_seed(0)
    model = models_pretrain.WorldModelTeacher(0, config, None).to(device)
    data = random_batch(batch, length, k)
    data.pop("task")
    counter = [0]

    def step():
        counter[0] += 1
        model._train(dict(data), task_id=counter[0] % k)

    return step, {"world_model": count(model.parameters())}


def reference_student_update(ref: str, update: str, device="cpu", batch: int = 8, length: int = 50, k: int = 6,
                             n: int = 6):
    """The reference's student update (`update` as in `student_update`), built from the configs its
    distillation command uses (defaults metaworld, `use_distill` per update); distill_wm's teacher is
    the MoE teacher its pretraining config describes (K tasks, N orthogonal experts), randomly initialised."""
    import torch

    distill = update == "distill_wm"
    config = reference_config(ref, ("defaults", "metaworld"), batch_size=batch, batch_length=length, num_actions=A,
                              device=str(device), use_distill=distill, teacher_model_path=None, num_teachers=k,
                              source_tasks=[f"task{i}" for i in range(k)], teacher_encoder_mode="moe",
                              teacher_n_experts=n, teacher_use_orthogonal=True)
    import models_distill  # the reference's modules
    import models_nodistill
    import tools as ref_tools

    config.teacher_act = str(config.act)  # as the teacher's saved config.json gives it
    # Its agent turns these schedule strings into callables of the step before building the models.
    for name in ("actor_entropy", "actor_state_entropy", "imag_gradient_mix", "moe_temperature"):
        setattr(config, name, lambda value=getattr(config, name): ref_tools.schedule(value, 0))
    torch.manual_seed(0)
    wm = (models_distill if distill else models_nodistill).WorldModelStudent(0, config, None).to(device)
    behavior = None
    if update == "student_full":
        behavior = models_nodistill.ImagBehavior(config, wm, config.behavior_stop_grad).to(device)
        behavior.requires_grad_(False)
    wm.requires_grad_(False)  # its loop keeps the agent frozen between updates (each `_train` unfreezes)
    data = random_batch(batch, length, k, task=False)

    def reward(feat, state, action):
        return wm.heads["reward"](wm.dynamics.get_feat(state)).mode()

    def step():
        post = wm._train(dict(data))[0]
        if behavior is not None:
            behavior._train(post, reward)

    parts = {"world_model": count(wm.module_para)}
    if behavior is not None:
        parts.update(actor=count(behavior.actor.parameters()), critic=count(behavior.value.parameters()))
    return step, parts


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
    """One measurement in this process: print {sec, cpu_sec, peak_rss_gib, param_counts} as JSON."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sizes = dict(device="cpu", batch=args.batch, length=args.length)
    if args.impl == "ref" and args.update == "teacher":
        step, parts = reference_teacher_update(args.ref, **sizes)
    elif args.impl == "ref":
        step, parts = reference_student_update(args.ref, args.update, **sizes)
    elif args.update == "teacher":
        step, parts = teacher_update(**sizes, expert_path=args.expert_path, precision=args.precision)
    else:
        step, parts = student_update(args.update, **sizes, precision=args.precision,
                                     teacher_precision=args.teacher_precision, expert_path=args.expert_path)
    times = time_calls(step, "cpu", args.warmup, args.reps)
    print(json.dumps({"sec": times, "cpu_sec": list(CPU_SECONDS), "param_counts": parts,
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))


def run_worker(impl: str, case: str, args) -> dict:
    update, batch, length, threads = CASES[case]
    if args.quick:
        batch, length = QUICK_SIZE
    cmd = [sys.executable, __file__, "--worker", impl, "--update", update, "--batch", str(batch),
           "--length", str(length), "--threads", str(threads), "--warmup", str(args.warmup), "--reps", str(args.reps)]
    cmd += ["--ref", args.ref] if impl == "ref" else VARIANTS[impl][0]
    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{impl} worker failed on {case}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="", help="checkout of the reference implementation (optional)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    parser.add_argument("--variants", default="ours", help="comma list: ours (our defaults, float32), ours:grouped, "
                        "ours:separate (MoE expert execution forced), ours:bf16 (--precision 16: bf16 autocast on a "
                        "CPU with native bf16), ours:teacher32 (distill cases: teacher_precision 32); a variant "
                        "runs in the cases it applies to")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (processes per variant and case)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"every case at batch x length {QUICK_SIZE} (smoke test)")
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--update", default="teacher", choices=UPDATES, help=argparse.SUPPRESS)
    parser.add_argument("--expert_path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--teacher_precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--precision", type=int, default=32, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_args(args) -> tuple[list[str], list[str]]:
    """The cases and variants to run; bad flags end with one line naming them."""
    needed = ("models_pretrain.py", "models_nodistill.py", "models_distill.py")
    if args.ref and not all((pathlib.Path(args.ref) / name).is_file() for name in needed):
        raise SystemExit(f"--ref {args.ref}: no {'/'.join(needed)} there; point it at the reference checkout")
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; valid: {list(CASES)}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    return cases, variants


def summarise(runs: list[dict]) -> dict:
    """Medians over the rounds of one implementation in one case (peak RSS: the largest)."""
    return {"sec": round(statistics.median([statistics.median(r["sec"]) for r in runs]), 3),
            "cpu_sec": round(statistics.median([statistics.median(r["cpu_sec"]) for r in runs]), 3),
            "peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs), 2),
            "sec_per_round": [round(statistics.median(r["sec"]), 3) for r in runs],
            "param_counts": runs[0]["param_counts"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        args.impl = args.worker
        return worker(args)
    cases, variants = check_args(args)
    sys.path.insert(0, str(ROOT))
    from bench.common import emit, machine

    impls = {c: (["ref"] if args.ref else []) + [v for v in variants if CASES[c][0] in VARIANTS[v][1]] for c in cases}
    result = {"machine": machine(), "malloc_env": MALLOC_ENV, "rounds": args.rounds, "warmup": args.warmup,
              "reps": args.reps, "quick": args.quick, "cases": {}}
    raw = {c: {i: [] for i in impls[c]} for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            for impl in impls[case]:
                raw[case][impl].append(run_worker(impl, case, args))
    for case in cases:
        update, batch, length, threads = CASES[case]
        row = {"update": update, "batch": list(QUICK_SIZE) if args.quick else [batch, length], "threads": threads}
        row.update({impl: summarise(raw[case][impl]) for impl in impls[case]})
        if args.ref:
            for impl in impls[case][1:]:
                row[f"speedup_{impl}"] = round(row["ref"]["sec"] / row[impl]["sec"], 2)
                row[f"cpu_speedup_{impl}"] = round(row["ref"]["cpu_sec"] / row[impl]["cpu_sec"], 2)
        result["cases"][case] = row
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result, args.out)


if __name__ == "__main__":
    main()
