"""What benchmarks share: the machine they ran on, their JSON output, random batches and our student built
for timing."""
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


def student_agent(config, k: int | None = None, active: int | None = None, device="cpu", seed: int = 0,
                  act_dim: int = 4, **overrides):
    """Our student `Agent` with no distiller (k None) or with a randomly initialised K-task comet teacher
    (MoE encoder; timing does not depend on the weights) restricted to its first `active` views;
    `overrides` are distillation config keys (teacher_precision, distill_batch). Returns (agent, distiller)."""
    import torch

    from agent import Agent
    from methods import build_method
    from models.world_model import TeacherWorldModel

    torch.manual_seed(seed)
    agent = Agent(config, None, act_dim, device)
    if k is None:
        return agent, None
    tconfig = {**config, "source_tasks": [f"metaworld_task{i}" for i in range(k)], "teacher_encoder_mode": "moe"}
    teacher = TeacherWorldModel(tconfig, act_dim).to(device).eval()
    distiller = build_method({**config, "prune_every": 0, **overrides}, teacher, agent.wm.feat_size, verbose=False)
    if active is not None:
        distiller.set_active(list(range(active)))
    agent.attach_distiller(distiller)
    return agent, distiller
