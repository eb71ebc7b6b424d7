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


_NATIVE_BF16: dict = {}


def native_bf16(device) -> bool:
    """Whether `device` has native bf16 arithmetic: a CPU whose oneDNN build runs bf16 natively (AVX-512 BF16
    or AMX), a CUDA GPU that supports it. Elsewhere bf16 is emulated and slower than float32."""
    import torch

    kind = torch.device(device).type
    if kind not in _NATIVE_BF16:
        if kind == "cpu":
            native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        elif kind == "cuda":
            native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else:
            native = False
        _NATIVE_BF16[kind] = bool(native)
    return _NATIVE_BF16[kind]
