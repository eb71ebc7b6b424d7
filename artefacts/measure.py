"""Measurements of policy variants: latency per action, throughput, action agreement on recorded observations.

Shape legend: n batch, L episode length, A action size.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def recorded_inputs(episodes: list[dict], keys) -> list[dict]:
    """Per episode: {key: (L, ...) tensor} observations plus `is_first` (L,), as recorded by an evaluation."""
    out = []
    for ep in episodes:
        item = {k: torch.as_tensor(np.asarray(ep[k])) for k in keys}
        item["is_first"] = torch.as_tensor(np.asarray(ep["is_first"], bool))
        out.append(item)
    return out


@torch.inference_mode()
def replay_actions(module, base, recorded: list[dict]) -> np.ndarray:
    """Actions (sum L, A) the policy takes along recorded episodes, carrying its own recurrent state."""
    actions = []
    for ep in recorded:
        stoch, deter, action = base.initial(1)
        for t in range(len(ep["is_first"])):
            obs = {k: ep[k][t:t + 1] for k in base.obs_keys}
            action, stoch, deter = module(obs, ep["is_first"][t:t + 1], stoch, deter, action)
            actions.append(action[0].numpy().copy())
    return np.stack(actions)


def batch_inputs(base, recorded: list[dict], n: int) -> tuple:
    """A batch of n recorded observations (cycled) with zero recurrent state, for timing."""
    pool = {k: torch.cat([ep[k] for ep in recorded]) for k in base.obs_keys}
    size = len(next(iter(pool.values())))
    index = torch.arange(n) % size
    obs = {k: v[index].contiguous() for k, v in pool.items()}
    return (obs, torch.zeros(n, dtype=torch.bool), *base.initial(n))


@torch.inference_mode()
def latency(module, inputs: tuple, calls: int = 200, warmup: int = 20) -> dict:
    """Wall time per call in ms: median and p90 over `calls` calls after `warmup`."""
    for _ in range(warmup):
        module(*inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        module(*inputs)
        times.append(time.perf_counter() - start)
    times = np.array(times) * 1e3
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def throughput(module, inputs: tuple, calls: int = 50) -> float:
    """Actions per second at the batch size of `inputs` (median call time)."""
    n = len(inputs[1])
    return n / (latency(module, inputs, calls, warmup=5)["median_ms"] / 1e3)


def compiled(module):
    """torch.compile of the module (inductor); the first calls compile, so time it after a warm-up."""
    torch._dynamo.reset()  # variants share ActingPolicy.forward: without a reset they exhaust its recompile limit
    return torch.compile(module, dynamic=False)
