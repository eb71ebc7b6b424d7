"""Shared test set-up: headless rendering before any mujoco import, one torch thread per test process."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from envs import headless_gl  # noqa: E402

headless_gl()  # before any test imports mujoco

import pytest  # noqa: E402
import torch  # noqa: E402

# The CI machine has 2 cores; one thread keeps tests deterministic and leaves a core for env workers.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests marked `device` (cpu, cuda, cuda:1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_hint(seconds): expected upper bound of a slow test's run time")
    config.addinivalue_line("markers", "device: runs on the --device device (bench/gpu_check.py selects these)")


@pytest.fixture
def device(request) -> torch.device:
    """The --device of this run; a CUDA device on a machine without one skips the test."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {dev}: no CUDA GPU on this machine")
    return dev


@pytest.fixture
def cuda_device(device) -> torch.device:
    """For paths that exist only on a GPU (bf16 autocast, torch.compile of the models)."""
    if device.type != "cuda":
        pytest.skip("CUDA-only path: run with --device cuda on a machine with a GPU (bench/gpu_check.sh)")
    return device
