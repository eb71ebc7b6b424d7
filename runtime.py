"""Process set-up shared by the stage scripts and their worker processes: seeding, device, thread count, and
workers that die with their parent."""
from __future__ import annotations

import ctypes
import os
import random
import signal

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


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `sig` when `parent` dies, even by SIGKILL, wherever the process is (busy,
    blocked, stopped): a killed stage leaves no orphans (SIGINT instead lets a stage script save first). Call it
    first thing in the worker, or in a subprocess's preexec hook."""
    try:
        # The process's own symbols (libc's among them): no library search, which may spawn a process and
        # has no place in a preexec hook.
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when it next finds its parent gone
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
