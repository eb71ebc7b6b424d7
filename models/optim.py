"""Adam for every model of the project, and an optimizer step that is skipped or taken on the device.

`adam` is fused (`fused=True`: one kernel for all parameters, step counters on the device) where the
device has the kernels (CUDA, CPU). `step_if(opt, ok)` takes the step where the 0-d bool tensor `ok` is
true and leaves weights, moments and step counts untouched where it is false, without the host reading
`ok`: fused Adam skips on its `found_inf` flag (the mechanism mixed-precision loss scaling uses).
Elsewhere (a device without fused kernels, e.g. `meta`) the step is taken and then undone where `ok` is
false, from copies of the weights and moments; the host-side step counters of non-fused Adam still
advance there.
"""
from __future__ import annotations

import torch

FUSED_DEVICES = ("cuda", "cpu")


def fusable(params) -> bool:
    """Whether fused Adam runs on these parameters (all floating point, on a device with the kernels)."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def adam(params, lr: float, eps: float, weight_decay: float = 0.0, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (AdamW with `decoupled` weight decay), fused where the parameters' device allows it. Build it
    after the parameters are on their device: the choice is made here."""
    params = list(params)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True if fusable(params) else None)


def is_fused(opt: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in opt.param_groups)


def step_if(opt: torch.optim.Optimizer, ok: torch.Tensor | None) -> None:
    """`opt.step()` where the 0-d bool `ok` holds, no change at all where it does not (None: always)."""
    if ok is None:
        opt.step()
    elif is_fused(opt):
        opt.found_inf = (~ok).float()
        try:
            opt.step()
        finally:
            del opt.found_inf
    else:
        _step_then_undo(opt, ok)


def _device_state(opt, p) -> list[torch.Tensor]:
    return [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v) and v.device == p.device]


@torch.no_grad()
def _step_then_undo(opt: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    saved = [(t, t.clone()) for p in params for t in (p, *_device_state(opt, p))]
    fresh = [p for p in params if not opt.state.get(p)]
    opt.step()
    for t, old in saved:
        t.copy_(torch.where(ok, t, old))
    for p in fresh:  # a skipped first step leaves zero moments, as if it had not happened
        for t in _device_state(opt, p):
            t.copy_(torch.where(ok, t, torch.zeros_like(t)))
