"""Per-task gradients of a multi-task teacher, PCGrad and gradient cosines.

Legend: P tasks present in a batch, G number of shared parameters (flattened).
"""
from __future__ import annotations

import torch


def per_task_gradients(model, weighted: torch.Tensor, tasks: list[int]):
    """Gradient of each present task's (weighted) loss: shared parameters as rows of G (P, G), and the
    summed gradients of the task-specific parameters. Returns (rows, shared, specific, specific_sum)."""
    shared = [p for _, p in model.shared_parameters()]
    specific = [p for _, p in model.task_parameters()]
    rows, specific_sum = [], [torch.zeros_like(p) for p in specific]
    for i, task in enumerate(tasks):
        grads = torch.autograd.grad(weighted[task], shared + specific, retain_graph=i < len(tasks) - 1,
                                    allow_unused=True)
        flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads[:len(shared)], shared)]
        rows.append(torch.cat(flat))
        for acc, g in zip(specific_sum, grads[len(shared):]):
            if g is not None:
                acc.add_(g)
    return torch.stack(rows), shared, specific, specific_sum


def pcgrad(grads: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """PCGrad (Yu et al. 2020) on G (P, G): each task's gradient is projected off every other task's
    gradient it conflicts with (negative dot product), visiting the others in random order (`generator`,
    a CPU generator); the projected gradients are summed. Returns (combined gradient (G,), fraction of
    conflicting pairs, 0-d). Decided on the device: the projection of a pair that does not conflict is
    a subtraction of zero, not a branch on the host."""
    p = grads.shape[0]
    norms_sq = (grads * grads).sum(1).clamp_min(1e-20)  # (P,)
    out = grads.clone()
    conflicts = grads.new_zeros(())
    for i in range(p):
        for j in torch.randperm(p, generator=generator).tolist():
            if j == i:
                continue
            dot = out[i] @ grads[j]
            out[i] -= dot.clamp(max=0.0) / norms_sq[j] * grads[j]
            conflicts = conflicts + (dot < 0).float()
    return out.sum(0), conflicts / max(p * (p - 1), 1)


def cosine_matrix(grads: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines of the rows of G (P, G): (P, P)."""
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return unit @ unit.t()


def assign(params: list[torch.nn.Parameter], grads) -> None:
    """Write gradients (a flat vector or one tensor per parameter) into `.grad`."""
    if torch.is_tensor(grads):
        grads = torch.split(grads, [p.numel() for p in params])
    for p, g in zip(params, grads):
        p.grad = g.reshape(p.shape).to(p.dtype)
