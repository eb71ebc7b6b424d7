"""How hard an added loss pulls: the gradient share r = |grad_theta L_part| / |grad_theta L_rest| of one part
of a loss against the rest of it, over a parameter set theta (the student's encoder + RSSM for distillation).

A measurement costs one extra backward of the part alone (`part_gradients`, before the ordinary backward of
the whole loss, with the graph retained); the rest's gradient is then the total gradient minus the part's
(`share`), so the ordinary backward is not repeated. The norms are taken before any gradient clipping, and
the results stay tensors on the parameters' device (no host sync; read them when logging).
"""
from __future__ import annotations

from typing import Sequence

import torch

SHARE, PART_NORM, REST_NORM = "distill/grad_share", "distill/grad_norm_distill", "distill/grad_norm_wm"


def part_gradients(part: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None] | None:
    """Gradients of the scalar `part` alone w.r.t. `params` (None for a parameter it does not reach), the
    graph kept for the backward of the whole loss; None when `part` reaches no parameter at all."""
    if not part.requires_grad:
        return None
    return list(torch.autograd.grad(part, list(params), retain_graph=True, allow_unused=True))


def share(part_grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """After the backward of the whole loss (so `p.grad` holds part + rest): r = |g_part| / |g_rest| and both
    norms, 0-d tensors keyed SHARE, PART_NORM, REST_NORM. A parameter without a gradient counts as zero."""
    part_sq, rest_sq = [], []
    for g, p in zip(part_grads, params, strict=True):
        total = p.grad
        if g is not None:
            part_sq.append(g.float().pow(2).sum())
        if total is not None:
            rest = total.float() - g.float() if g is not None else total.float()
            rest_sq.append(rest.pow(2).sum())
    zero = params[0].new_zeros((), dtype=torch.float32)
    part_norm = torch.stack(part_sq).sum().sqrt() if part_sq else zero
    rest_norm = torch.stack(rest_sq).sum().sqrt() if rest_sq else zero
    return {SHARE: part_norm / rest_norm, PART_NORM: part_norm, REST_NORM: rest_norm}
