"""Shared test set-up: headless rendering before any mujoco import, one torch thread per test process."""
import os
import pathlib
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# The CI machine has 2 cores; one thread keeps tests deterministic and leaves a core for env workers.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout_hint(seconds): expected upper bound of a slow test's run time")
