"""What benchmarks share: the machine they ran on, their JSON output, random batches, our student built for
timing and the timing of its updates."""
from __future__ import annotations

import json
import os
import pathlib
import platform


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else whatever the platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device=None) -> dict:
    """CPU, cores, torch version and threads, GPU (when `device` is CUDA) and the 1/5/15-min load averages
    now: on a shared machine the load explains most of the spread between repeated runs."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emit(result: dict, out: str | os.PathLike = "") -> dict:
    """Print `result` as indented JSON and, with `out`, write the same text there."""
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    if out:
        pathlib.Path(out).write_text(text + "\n")
    return result


def random_teacher_batch(b: int, t: int, k: int, rng, act_dim: int = 4) -> dict:
    """A mixed-task (B, T) pretraining batch of random 64x64 frames and actions (speed does not depend
    on the values); numpy only, so a process running another implementation can use it too."""
    import numpy as np

    return {"image": rng.integers(0, 256, (b, t, 64, 64, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (b, t, act_dim)).astype(np.float32),
            "reward": rng.normal(size=(b, t)).astype(np.float32),
            "discount": np.ones((b, t), np.float32),
            "is_first": np.eye(1, t, dtype=bool).repeat(b, 0),
            "task": np.arange(b) % k}


def random_student_batch(config, shapes: dict, seed: int = 0, act_dim: int = 4) -> dict:
    """A student (B, T) batch in the replay's format with random content (speed does not depend on it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, t = config["batch_size"], config["batch_length"]
    batch = {"action": rng.uniform(-1, 1, (b, t, act_dim)).astype(np.float32),
             "reward": rng.uniform(0, 10, (b, t)).astype(np.float32), "discount": np.ones((b, t), np.float32),
             "is_first": np.zeros((b, t), bool), "is_terminal": np.zeros((b, t), bool)}
    batch["is_first"][:, 0] = True
    if "image" in shapes:
        batch["image"] = rng.integers(0, 256, (b, t, *shapes["image"]), dtype=np.uint8)
    if "state" in shapes:
        batch["state"] = rng.normal(size=(b, t, *shapes["state"])).astype(np.float32)
    return batch


def update_times(agent, batch: dict, updates: int, clock) -> tuple[float, list[float], list[float]]:
    """`agent.train` on `batch`: wall seconds of a first, warm-up call (allocations, Adam state, compilation),
    then `clock` seconds of `updates` more calls and of the behaviour part of each (`Behavior.train_step`)."""
    import time

    train_step, behaviour = agent.behavior.train_step, []

    def timed(*args, **kwargs):
        start = clock()
        out = train_step(*args, **kwargs)
        behaviour.append(clock() - start)
        return out

    agent.behavior.train_step = timed
    try:
        start = time.perf_counter()
        agent.train(batch, 0)
        first = time.perf_counter() - start
        behaviour.clear()
        totals = []
        for i in range(updates):
            start = clock()
            agent.train(batch, i + 1)
            totals.append(clock() - start)
    finally:
        del agent.behavior.train_step  # the class's method again
    return first, totals, behaviour


def student_agent(config, k: int | None = None, active: int | None = None, device="cpu", seed: int = 0,
                  act_dim: int = 4, **overrides):
    """Our student `Agent` with no distiller (k None) or with a randomly initialised K-task comet teacher
    (MoE encoder; timing does not depend on the weights) restricted to its first `active` views;
    `overrides` are config keys of the distiller and the agent (teacher_precision, distill_batch, distill_target,
    grad_share_every). Returns (agent, distiller)."""
    import torch

    from models.agent import Agent
    from methods import build_method
    from models.world_model import TeacherWorldModel

    torch.manual_seed(seed)
    agent = Agent({**config, **overrides}, None, act_dim, device)
    if k is None:
        return agent, None
    tconfig = {**config, "source_tasks": [f"metaworld_task{i}" for i in range(k)], "teacher_encoder_mode": "moe"}
    teacher = TeacherWorldModel(tconfig, act_dim).to(device).eval()
    distiller = build_method({**config, "prune_every": 0, **overrides}, teacher, agent.wm.feat_size, verbose=False)
    if active is not None:
        distiller.set_active(list(range(active)))
    agent.attach_distiller(distiller)
    return agent, distiller


def cpu_times(fn, reps: int) -> list[float]:
    """Process CPU seconds of each of `reps` calls of `fn` (on a shared CPU they move far less with other jobs'
    load than wall seconds)."""
    import time

    out = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        out.append(time.process_time() - start)
    return out
