"""Export the fp32 acting policy as a self-contained `torch.export` program (.pt2).

A robot stack loads it with plain torch, without this repository:

    program = torch.export.load("policy.pt2").module()
    action, stoch, deter = program(obs, is_first, stoch, deter, action)   # batch 1, float32

`obs` is a dict {'state': (1, 39) float32} and/or {'image': (1, H, W, 3) uint8}; start with zero stoch/deter/
action (shapes in the file's metadata) and `is_first` True. The program is the ActingPolicy's graph at
batch 1 (deterministic: posterior mean, mode action).
"""
from __future__ import annotations

import json
import pathlib

import torch

from artefacts.policy import ActingPolicy


def example_inputs(module: ActingPolicy, obs_shapes: dict) -> tuple:
    """Batch-1 inputs of the right shapes and dtypes."""
    obs = {}
    for key in module.obs_keys:
        shape = (1, *obs_shapes[key])
        obs[key] = torch.zeros(shape, dtype=torch.uint8) if key == "image" else torch.zeros(shape)
    return (obs, torch.ones(1, dtype=torch.bool), *module.initial(1))


def export(module: ActingPolicy, obs_shapes: dict, path) -> pathlib.Path:
    """Write `path` (.pt2) with the program and its input shapes as extra metadata."""
    path = pathlib.Path(path)
    inputs = example_inputs(module, obs_shapes)
    # The actor builds a torch Distribution, whose argument validation is a data-dependent branch that
    # cannot be traced; the mode needs no validation.
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        program = torch.export.export(module.eval(), inputs, strict=False)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    meta = {"obs": {k: [list(v.shape), str(v.dtype)] for k, v in inputs[0].items()},
            "stoch": list(inputs[2].shape), "deter": list(inputs[3].shape), "action": list(inputs[4].shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path), extra_files={"inputs.json": json.dumps(meta)})
    return path


def load(path):
    """The exported program as a callable module."""
    return torch.export.load(str(path)).module()
