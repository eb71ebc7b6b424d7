"""Teacher world-model speed: updates/s at the paper config and at a small one, the MoE encoder's
cost relative to one ConvEncoder, and gating once vs recomputing the experts per task view.

    python bench/teacher_step.py --device cpu
    python bench/teacher_step.py --device cuda            # also bf16 and torch.compile variants

Prints one JSON object. Synthetic data (uniform random frames and actions): speed does not
depend on the pixel values. Times are medians over the timed repetitions, after warm-up.

Shape legend: B batch, T sequence length, K source tasks, N experts.
"""
from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
import tools  # noqa: E402
from bench.common import emit, machine, random_teacher_batch  # noqa: E402
from models import ConvEncoder, OrthogonalMoEEncoder, TeacherWorldModel, compile_model  # noqa: E402
from models.optim import adam  # noqa: E402

A = 4
PAPER = dict(k=6, n=6, batch_size=50, batch_length=50, cnn_depth=32)
SMALL = dict(k=3, n=3, batch_size=8, batch_length=16, cnn_depth=8, dyn_stoch=16, dyn_deter=64, dyn_hidden=64,
             mlp_units=128)


def make_config(spec: dict, precision: int = 32):
    config = configs.load_config(["--configs", "defaults", "metaworld"])
    spec = dict(spec)
    k, n = spec.pop("k"), spec.pop("n")
    config.update(spec)
    config.update(source_tasks=[f"task{i}" for i in range(k)], n_experts=n, precision=precision)
    return config


def make_batch(b: int, t: int, k: int, rng: np.random.Generator) -> dict:
    return random_teacher_batch(b, t, k, rng, A)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_TIMES: list[float] = []  # process CPU seconds of the last `timed` call's repetitions


def timed(fn, device, warmup: int, reps: int) -> float:
    """Median wall seconds per call of `fn` after `warmup` untimed calls. The process CPU seconds
    per call land in CPU_TIMES: on a shared CPU they vary far less with other jobs' load."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    CPU_TIMES.clear()
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        CPU_TIMES.append(time.process_time() - cpu)
    return statistics.median(times)


def cpu_median() -> float:
    return statistics.median(CPU_TIMES)


def update_rate(spec: dict, device, warmup: int, reps: int, precision: int = 32, compile_: bool = False,
                expert_path: str | None = None, graphs: bool = False, profile=None) -> dict:
    """World-model updates/s (loss, backward, clip, Adam step) on one mixed-task batch. `expert_path`
    forces the MoE experts' execution ("grouped" | "separate"; None: the per-device/batch choice); `graphs`
    captures the update in a CUDA graph (models.graphs, after its warm-up); `profile(update) -> dict` adds
    its figures (bench/device_speed.busy)."""
    from models.graphs import capture_teacher

    torch.manual_seed(0)
    config = make_config(spec, precision)
    model = TeacherWorldModel(config, A).to(device)
    if expert_path is not None:
        model.encoder.conv.path = expert_path
    if compile_:
        compile_model(model)
    optimizer = adam(model.parameters(), config.model_lr, config.model_eps)
    data = model.preprocess(make_batch(config.batch_size, config.batch_length, spec["k"], np.random.default_rng(0)))

    def step(inputs: dict) -> dict:
        loss, _, _ = model.loss(inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.model_grad_clip)
        optimizer.step()
        return {"loss": loss.detach()}

    if graphs:
        captured = capture_teacher(model, optimizer, step)
        warmup = max(warmup, captured.warmup + 1)  # the capture itself is not timed
        update = lambda: captured(data)  # noqa: E731
    else:
        update = lambda: step(data)  # noqa: E731
    seconds = timed(update, device, warmup, reps)
    cpu = cpu_median()
    return {"updates_per_sec": 1.0 / seconds, "sec_per_update": seconds, "cpu_sec_per_update": cpu,
            **(profile(update) if profile is not None else {}), "warmup": warmup, "timed": reps,
            "params": sum(p.numel() for p in model.parameters()),
            "config": {**spec, "precision": precision, "compile": compile_, "cuda_graphs": graphs},
            "expert_path": model.encoder.conv.resolve_path(config.batch_size * config.batch_length, device)}


def encoder_cost(n: int, k: int, b: int, t: int, depth: int, device, warmup: int, reps: int) -> dict:
    """Forward+backward seconds of the MoE encoder vs one ConvEncoder vs N ConvEncoders in a loop,
    all on the same (B*T) images."""
    torch.manual_seed(0)
    image = (torch.rand(b, t, 64, 64, 3, device=device) - 0.5)
    task = torch.arange(b, device=device) % k
    moe = OrthogonalMoEEncoder(n, k, depth=depth).to(device)
    single = ConvEncoder(depth).to(device)
    loop = torch.nn.ModuleList(ConvEncoder(depth) for _ in range(n)).to(device)

    def run_moe():
        moe({"image": image}, task).sum().backward()

    def run_single():
        single(image).sum().backward()

    def run_loop():
        torch.stack([enc(image) for enc in loop], -2).sum().backward()

    moe_s = timed(run_moe, device, warmup, reps)
    moe_cpu = cpu_median()
    single_s = timed(run_single, device, warmup, reps)
    single_cpu = cpu_median()
    loop_s = timed(run_loop, device, warmup, reps)
    loop_cpu = cpu_median()
    return {"images": b * t, "n_experts": n, "moe_sec": moe_s, "conv_encoder_sec": single_s,
            "n_separate_encoders_sec": loop_s, "moe_over_one_encoder": moe_s / single_s,
            "moe_over_n_separate": moe_s / loop_s, "moe_cpu_sec": moe_cpu, "conv_encoder_cpu_sec": single_cpu,
            "n_separate_encoders_cpu_sec": loop_cpu, "cpu_moe_over_one_encoder": moe_cpu / single_cpu,
            "cpu_moe_over_n_separate": moe_cpu / loop_cpu}


@torch.no_grad()
def task_view_cost(spec: dict, b: int, t: int, device, warmup: int, reps: int) -> dict:
    """K task views of one batch: experts once + K gates (task_features) vs the encoder recomputed
    per view (what the reference did)."""
    torch.manual_seed(0)
    config = make_config(spec)
    model = TeacherWorldModel(config, A).to(device).eval()
    data = model.preprocess(make_batch(b, t, spec["k"], np.random.default_rng(0)))
    views = list(range(spec["k"]))
    once = timed(lambda: model.task_features(data, views), device, warmup, reps)
    once_cpu = cpu_median()
    per_view = timed(lambda: [model.observe(data, task=v, sample=False) for v in views], device, warmup, reps)
    per_view_cpu = cpu_median()
    return {"batch": [b, t], "views": len(views), "gate_once_sec": once, "recompute_per_view_sec": per_view,
            "speedup": per_view / once, "cpu_speedup": per_view_cpu / once_cpu}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions at the paper config")
    parser.add_argument("--small_reps", type=int, default=10)
    parser.add_argument("--skip_paper", action="store_true", help="small config and ratios only")
    args = parser.parse_args(argv)
    device = tools.get_device(args.device)
    out = {"device": str(device), "machine": machine(device)}
    out["small"] = update_rate(SMALL, device, max(args.warmup, 2), args.small_reps)
    out["encoder_small_batch"] = encoder_cost(6, 6, 8, 16, 32, device, 2, 5)
    out["task_views"] = task_view_cost(dict(PAPER, batch_size=8, batch_length=16), 8, 16, device, 1, 3)
    cuda = device.type == "cuda"
    warmup, reps = (max(args.warmup, 3), max(args.reps, 10)) if cuda else (args.warmup, args.reps)
    if not args.skip_paper:
        out["paper"] = update_rate(PAPER, device, warmup, reps)
        out["encoder_paper_batch"] = encoder_cost(6, 6, 50, 50, 32, device, 1, max(reps, 1))
    if cuda:
        out["paper_bf16"] = update_rate(PAPER, device, warmup, reps, precision=16)
        out["paper_bf16_compile"] = update_rate(PAPER, device, warmup, reps, precision=16, compile_=True)
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out["load_avg_end"] = machine()["load_avg"]
    return emit(out)


if __name__ == "__main__":
    main()
