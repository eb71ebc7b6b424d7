"""The device-independent cost of one update at the paper config (teacher K = N = 6; student plain and distilling
from a K = 6 teacher), measured on the CPU: floating-point operations and peak tensor memory.

    python bench/update_flops.py [--threads 1] [--skip_memory] [--out f.json]

FLOPs: torch's FlopCounterMode over one ordinary update (forward + backward), matrix products and convolutions
only (what the counter covers), not element-wise work. Divided by a GPU's measured matrix rate this bounds the GPU
time per update from below. torch's formula for a convolution's weight gradient ignores `groups` (it counts
every input channel against every output channel), which multiplies the grouped expert convolutions' weight
gradients by N; `conv_backward_flop` below counts them as what they are (a weight gradient costs the
multiply-adds of its forward convolution), and the JSON gives torch's uncorrected total beside it. The teacher's
experts run as one grouped convolution per layer, their execution on a GPU (`BatchedConvExperts.path`).

Memory: the peak of the bytes of all tensors alive during a steady-state update (after one warm-up update, so
the optimizer states exist), from the CPU allocator's own accounting (torch.profiler with profile_memory): the
weights, optimizer states and everything the update allocates. In float32, the CPU's precision; a GPU run in
bf16 keeps many activations in half the bytes, while its allocator rounds blocks up and the CUDA context and
the cuDNN/cuBLAS workspaces come on top. bench/gpu_check.py measures the real figure
(torch.cuda.max_memory_allocated); until then this is the estimate `sweeps/gpu_share.py` starts from.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, get_shape  # noqa: E402

import configs  # noqa: E402
from bench import distill_step, teacher_step  # noqa: E402
from bench.common import emit, machine  # noqa: E402
from models import TeacherWorldModel  # noqa: E402

CPU = torch.device("cpu")
aten = torch.ops.aten


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """FLOPs of a convolution's backward with `groups` respected: the input gradient is a (transposed)
    convolution with the same per-group weight, and the weight gradient pairs the same input and output
    elements as the forward, so it costs what the forward costs (`w_shape` holds C_in / groups already)."""
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


GROUPED = {aten.convolution_backward: conv_backward_flop}


def teacher_update():
    """The teacher's update at the paper config (loss, backward, Adam), experts grouped as on a GPU."""
    config = teacher_step.make_config(teacher_step.PAPER)
    model = TeacherWorldModel(config, teacher_step.A)
    model.encoder.conv.path = "grouped"
    optimizer = torch.optim.Adam(model.parameters(), lr=config.model_lr, eps=config.model_eps)
    batch = teacher_step.make_batch(config.batch_size, config.batch_length, teacher_step.PAPER["k"],
                                    np.random.default_rng(0))
    data = model.preprocess(batch)

    def update():
        loss, _, _ = model.loss(data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def student_update(k: int | None):
    """`Agent.train` at the paper config; with k, distilling from a random K-task comet teacher (experts grouped)."""
    config = configs.load_config(["--configs", "defaults", "metaworld"])
    agent, _ = distill_step.build(config, k, None, CPU, seed=0)
    if agent.distiller is not None:
        agent.distiller.teacher.encoder.conv.path = "grouped"
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    steps = iter(range(10 ** 9))
    return lambda: agent.train(batch, next(steps))


def flops(update) -> dict:
    """GFLOP of an ordinary update (the second), counted with groups and by torch's own formula (the third), and
    of the first (a distilling student's first update also measures the gradient share, every
    `grad_share_every` updates)."""
    counts = []
    for mapping in (GROUPED, GROUPED, {}):
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            update()
        counts.append(round(counter.get_total_flops() / 1e9, 1))
    return {"gflop": counts[1], "gflop_torch_counter_without_groups": counts[2], "gflop_first_update": counts[0]}


def resident_bytes() -> int:
    """Bytes of every tensor storage alive now (weights, optimizer states, cached inputs), each counted once."""
    import gc

    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_tensor_gib(update) -> dict:
    """Bytes alive at the update's peak: those alive before it (weights, optimizer states, the batch) plus the
    highest running total of what the update itself allocates and frees (the CPU allocator's own count,
    reported to the profiler with every allocation)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    update()  # warm-up: optimizer states exist from here on
    resident = resident_bytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        update()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    totals = [n.extra_fields.total_allocated for n in walk(prof.profiler.kineto_results.experimental_event_tree())
              if n.tag == _EventType.Allocation]
    peak = max(totals, default=0)
    return {"resident_gib": round(resident / 2 ** 30, 2), "update_alloc_peak_gib": round(peak / 2 ** 30, 2),
            "peak_gib": round((resident + peak) / 2 ** 30, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "precision": "float32"}
    for name, build in (("teacher_k6", teacher_update), ("student_plain", lambda: student_update(None)),
                        ("student_distill_k6", lambda: student_update(6))):
        torch.manual_seed(0)
        update = build()
        result[name] = flops(update)
        if not args.skip_memory:
            result[name].update(peak_tensor_gib(update))
        print(f"[update_flops] {name}: {result[name]}", file=sys.stderr, flush=True)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
