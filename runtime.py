"""Process set-up shared by the stage scripts: seeding, device and thread count."""
from __future__ import annotations

import random

import numpy as np

from configs import ConfigError


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(name: str):
    """Return a torch.device; asking for CUDA where there is none is an error, not a silent fallback."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def set_threads(threads: int) -> None:
    """Use `threads` torch CPU threads (0 keeps torch's default)."""
    if int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
