"""Console commands (pyproject.toml `[project.scripts]`): `comet-distill ARGS` behaves exactly like
`python dreamer_distill.py ARGS` (same flags, output and exit code), from any folder."""
from __future__ import annotations

import runpy
import sys


def _script(module: str) -> None:
    """Run a stage script as `__main__` (its own command-line handling and exit code)."""
    sys.argv[0] = f"{module}.py"
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def collect() -> None:
    _script("collect_data")


def pretrain() -> None:
    _script("dreamer_pretrain")


def distill() -> None:
    _script("dreamer_distill")


def ood() -> None:
    _script("ood_detection")


def quickstart() -> None:
    _script("quickstart")
