"""State probe: how well a ridge regression recovers the true low-dimensional state (Meta-World's 39-d vector)
from a latent, on episodes the world model never trained on.

The latent is the posterior mean feature (deterministic), filtered over whole episodes: the student's, and the
teacher's under each active view. The regression is cross-fitted over two halves of the episodes (even and odd
positions): fitted on one half, scored on the other, both ways; the probe is the mean of the two R^2 values. R^2
is pooled over the state's dimensions (1 - total squared error / total variance around the scored half's mean),
so dimensions that hardly vary (padding, the goal within a batch of one goal) weigh little. Features are
standardised with the fitting half's statistics and the ridge penalty is `ridge` times the number of fitted
rows (a penalty relative to unit feature variance).

Used by the student loop at `probe_every` (on its evaluation episodes) and by bench/distill_offline.py (on its
held-out episodes). Shape legend: docs/architecture.md (L episode length, F feature size, Ds state size, V views).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

RIDGE = 1e-2
CHUNK = 8  # episodes per forward pass, bounding the memory of long pixel episodes


def ridge_r2(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             ridge: float = RIDGE) -> float:
    """Pooled R^2 on (x_test, y_test) of a ridge regression fitted on (x_fit, y_fit); rows (M, F) and (M, Ds)."""
    x_fit, y_fit, x_test, y_test = (a.detach().double().cpu() for a in (x_fit, y_fit, x_test, y_test))
    mean, std = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    xf, xt = (x_fit - mean) / std, (x_test - mean) / std
    y_mean = y_fit.mean(0)
    gram = xf.T @ xf + ridge * len(xf) * torch.eye(xf.shape[1], dtype=xf.dtype)
    weight = torch.linalg.solve(gram, xf.T @ (y_fit - y_mean))  # (F, Ds)
    error = ((xt @ weight + y_mean - y_test) ** 2).sum()
    total = ((y_test - y_test.mean(0)) ** 2).sum()
    return float(1.0 - error / total.clamp(min=1e-12))


def cross_fitted_r2(feats: Sequence[torch.Tensor], states: Sequence[torch.Tensor], ridge: float = RIDGE) -> float:
    """Mean R^2 of the two ways of fitting on one half of the episodes (even / odd positions) and scoring on the
    other; feats[i] (L_i, F) and states[i] (L_i, Ds) belong to episode i. Needs two episodes or more."""
    assert len(feats) == len(states) >= 2, f"a cross-fitted probe needs >= 2 episodes, got {len(feats)}"
    halves = [(torch.cat(list(feats[h::2])), torch.cat(list(states[h::2]))) for h in (0, 1)]
    return 0.5 * (ridge_r2(*halves[0], *halves[1], ridge) + ridge_r2(*halves[1], *halves[0], ridge))


def _batches(episodes: Sequence[dict], keys: Sequence[str]):
    """(indices, stacked batch) of episodes of equal length, CHUNK at a time, in episode order within a length."""
    by_length: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_length.setdefault(len(ep["action"]), []).append(i)
    for idx in by_length.values():
        for j in range(0, len(idx), CHUNK):
            part = idx[j:j + CHUNK]
            yield part, {k: np.stack([episodes[i][k] for i in part]) for k in keys}


@torch.no_grad()
def student_latents(wm, episodes: Sequence[dict]) -> list[torch.Tensor]:
    """The student's posterior mean features of each episode: [(L_i, F)]."""
    out: list[torch.Tensor | None] = [None] * len(episodes)
    for idx, batch in _batches(episodes, (*wm.obs_keys, "action", "is_first")):
        data = wm.preprocess(batch)
        with wm.autocast():
            post, _ = wm.dynamics.observe(wm.embed(data), data["action"], data["is_first"], sample=False)
            feat = wm.dynamics.get_feat(post).float()  # (E, L, F)
        for i, f in zip(idx, feat):
            out[i] = f
    return out


@torch.no_grad()
def teacher_latents(teacher, tasks: Sequence[int], episodes: Sequence[dict]) -> list[list[torch.Tensor]]:
    """The teacher's posterior mean features of each episode under each view of `tasks`: [view][(L_i, Ft)]."""
    out = [[None] * len(episodes) for _ in tasks]
    for idx, batch in _batches(episodes, (*teacher.obs_keys, "action", "is_first")):
        feat = teacher.task_features(batch, list(tasks), sample=False)  # (V, E, L, Ft)
        for v in range(len(tasks)):
            for i, f in zip(idx, feat[v]):
                out[v][i] = f
    return out


def probe(wm, episodes: Sequence[dict], teacher=None, tasks: Sequence[int] = (), task_names=None,
          ridge: float = RIDGE) -> dict[str, float]:
    """The probe's metrics on `episodes` (each with a 'state'): `probe/student_r2`, and with a teacher
    `probe/teacher_r2_<task>` per view of `tasks` and their mean `probe/teacher_r2`. Empty when fewer than two
    episodes carry a state."""
    episodes = [ep for ep in episodes if "state" in ep]
    if len(episodes) < 2:
        return {}
    states = [torch.as_tensor(ep["state"], dtype=torch.float32) for ep in episodes]
    out = {"probe/student_r2": cross_fitted_r2(student_latents(wm, episodes), states, ridge)}
    if teacher is not None and tasks:
        names = list(task_names) if task_names is not None else list(teacher.task_names)
        per_view = [cross_fitted_r2(f, states, ridge) for f in teacher_latents(teacher, tasks, episodes)]
        out.update({f"probe/teacher_r2_{names[k]}": r for k, r in zip(tasks, per_view)})
        out["probe/teacher_r2"] = float(np.mean(per_view))
    return out
