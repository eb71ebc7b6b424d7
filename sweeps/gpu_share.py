"""How many jobs of a sweep share one GPU: the Ray GPU fraction of a job when the spec says `num_gpus: auto` (the
default), so that one GPU runs N students of a seeds x methods grid at once.

Ray's GPU fractions are bookkeeping: it starts as many jobs on a GPU as their fractions allow and sets
`CUDA_VISIBLE_DEVICES`, but it does not share memory out. What must fit is every job's peak memory, so a job of
kind k gets 1 / N_k of a GPU with

    N_k = min(MAX_JOBS_PER_GPU, floor(gpu_gib * USABLE / (PEAK_GIB[k] * ALLOCATOR + CONTEXT_GIB)))

PEAK_GIB are ESTIMATES, not GPU measurements: the peak tensor memory of one update at the paper config (batch
50 x 50, 64 x 64, K = N = 6), measured on the CPU in float32 by `python bench/update_flops.py`
(bench/update_flops.json; bf16 on a GPU keeps many activations in half the bytes, so they err high). ALLOCATOR
allows for the CUDA caching allocator's rounding and fragmentation, CONTEXT_GIB for each process's CUDA context
and cuBLAS/cuDNN workspaces. `bench/gpu_check.py` measures the real peaks (`*.peak_gpu_gib`) and how throughput
grows with concurrent students (`concurrent`); replace these figures with its first results. MAX_JOBS_PER_GPU
caps N where memory would allow more than the GPU's compute is known to serve (the project's goal is >= 8
concurrent students per H200; the cap moves with the measured throughput).
"""
from __future__ import annotations

import math

# bench/update_flops.json: teacher K = N = 6 7.56 GiB; distilling student (K = 6) 3.84 GiB, plain 2.72 GiB (a
# student job takes the larger); OOD scoring runs the teacher forward only, its update's figure bounds it.
PEAK_GIB = {"teacher": 7.6, "student": 3.9, "ood": 7.6}
ALLOCATOR = 1.25
CONTEXT_GIB = 1.0
USABLE = 0.9  # of the GPU's memory: headroom for the driver and for peaks above the estimate
MAX_JOBS_PER_GPU = 8
# GPU memory assumed where the driver sees no GPU (a cluster's head node): the smallest data-centre GPU this
# is sized for (A100/H100, 80 GB); a sweep driven from a GPU machine uses that GPU's memory.
DEFAULT_GPU_GIB = 80.0


def local_gpu_gib() -> float:
    """Memory of this machine's first GPU, or DEFAULT_GPU_GIB without one."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    return DEFAULT_GPU_GIB


def jobs_per_gpu(kind: str, gpu_gib: float) -> int:
    """How many jobs of `kind` (teacher | student | ood) fit on one GPU of `gpu_gib` GiB (at least 1)."""
    need = PEAK_GIB[kind] * ALLOCATOR + CONTEXT_GIB
    return max(1, min(MAX_JOBS_PER_GPU, math.floor(gpu_gib * USABLE / need)))


def fraction(kind: str, gpu_gib: float | None = None) -> float:
    """Ray `num_gpus` of one job of `kind`: 1 / jobs_per_gpu, rounded down to Ray's 1e-4 resolution."""
    n = jobs_per_gpu(kind, local_gpu_gib() if gpu_gib is None else gpu_gib)
    return math.floor(1e4 / n) / 1e4
