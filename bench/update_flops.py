"""Floating-point operations of one update at the paper config (teacher K = N = 6; student plain and
distilling from a K = 6 teacher), counted by torch's FlopCounterMode over one forward + backward on the
CPU. Divided by a GPU's measured matrix rate this gives a lower bound on the GPU time per update.

    python bench/update_flops.py [--threads 1]

Counts matrix products and convolutions (what the counter covers), not element-wise work.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench import device_speed, distill_step, teacher_step  # noqa: E402
from bench.common import emit, machine  # noqa: E402
from models import TeacherWorldModel  # noqa: E402

CPU = torch.device("cpu")


def teacher_flops() -> int:
    config = teacher_step.make_config(teacher_step.PAPER)
    model = TeacherWorldModel(config, device_speed.A)
    batch = teacher_step.make_batch(config.batch_size, config.batch_length, teacher_step.PAPER["k"],
                                    np.random.default_rng(0))
    data = model.preprocess(batch)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model.loss(data)
        loss.backward()
    return counter.get_total_flops()


def student_flops(k: int | None) -> int:
    config = device_speed.student_config(["defaults", "metaworld"], CPU, "fp32")
    agent = device_speed.build_student(config, k, CPU, "fp32")
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    with FlopCounterMode(display=False) as counter:
        agent.train(batch, 0)
    return counter.get_total_flops()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flops = {"teacher_k6": teacher_flops(), "student_plain": student_flops(None), "student_distill_k6": student_flops(6)}
    return emit({"machine": machine(), "gflop_per_update": {k: round(v / 1e9, 1) for k, v in flops.items()}})


if __name__ == "__main__":
    main()
