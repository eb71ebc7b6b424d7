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
def interleaved_times(modules: dict, inputs: tuple, calls: int, rounds: int = 10, warmup: int = 5) -> dict:
    """Time per call in ms of every module on the same inputs: {name: (wall (calls,), CPU (calls,))}. The calls are
    timed in `rounds` blocks that alternate between the modules (in a rotating order), so a change of the
    machine's load during the run falls on every module alike and the ratios between them hold. CPU time is
    this thread's (with one torch thread all the work runs in it): what the call costs, without the time other
    processes held the core."""
    for module in modules.values():
        for _ in range(warmup):  # the first calls of a compiled module compile it
            module(*inputs)
    names, per_round = list(modules), max(1, calls // rounds)
    times: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            module = modules[name]
            for _ in range(per_round):
                wall, cpu = time.perf_counter(), time.thread_time()
                module(*inputs)
                times[name].append((time.perf_counter() - wall, time.thread_time() - cpu))
    return {name: tuple(np.array(t).T * 1e3) for name, t in times.items()}


def compiled(module):
    """torch.compile of the module (inductor); the first calls compile, so time it after a warm-up. Every variant
    gets its own compiled code (for batch 1 and 64): an error, not a silent fall-back to eager, if that is more
    than dynamo's recompile limit allows."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(module, dynamic=False)
