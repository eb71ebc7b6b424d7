"""What a latent-matching method matches (`distill_target`): posterior features, one-step transition
predictions (`prior`) or k-step open-loop predictions (`open_loop`, k = `distill_horizon`).

`prior` and `open_loop` are the same computation with k = 1 and k = `distill_horizon`: from the posterior
state at every start t of the window (t = 0 .. T-k-1), each model rolls its prior forward along the replay's
actions a_{t+1} .. a_{t+k} (action[t] led to observation t), and the predicted features at t+1 .. t+k are
matched. The student's rollout starts from its posterior (with gradients: they reach the encoder and every
part of the RSSM, transition layers included); the teacher's from its posterior means under each view, with no
gradient. Both rollouts use the prior means (no sampling), so the targets are deterministic. A prediction
whose rollout crosses an episode start (`is_first` in (t, t+j]) is masked out.

Shape legend: docs/architecture.md (V views, B batch, T time; here M = B * (T - k) start states, k horizon).
"""
from __future__ import annotations

import torch

from models.networks import TaskBlocks
from models.world_model import float32

TARGETS = ("posterior", "prior", "open_loop")


def horizon(target: str, distill_horizon: int) -> int:
    """Steps of open-loop prediction a target matches: 0 (posterior), 1 (prior), distill_horizon (open_loop)."""
    return {"posterior": 0, "prior": 1, "open_loop": int(distill_horizon)}[target]


def windows(data: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The actions of every k-step rollout (M, k, A) and which predictions are valid (M, k): those whose rollout
    does not cross an episode start. Start t uses a_{t+1} .. a_{t+k}."""
    action = data["action"]
    b, t = action.shape[:2]
    assert t > k, f"distill_horizon {k} needs windows longer than {k} steps, got batch_length {t}"
    acts = action[:, 1:].unfold(1, k, 1).movedim(-1, 2)  # (B, T-k, k, A)
    first = data.get("is_first")
    if first is None:
        valid = torch.ones(b, t - k, k, dtype=torch.bool, device=action.device)
    else:
        count = first.long().cumsum(1)  # (B, T)
        valid = (count[:, 1:].unfold(1, k, 1) - count[:, : t - k, None]) == 0  # (B, T-k, k)
    return acts.reshape(b * (t - k), k, -1), valid.reshape(b * (t - k), k)


def starts(states: dict, k: int, time_dim: int) -> dict:
    """The states at t = 0 .. T-k-1 of a state dict whose time axis is `time_dim` (the axis after the batch), the
    batch and time axes merged: (..., B, T, ...) -> (..., M, ...) with M = B * (T - k)."""
    return {key: x.narrow(time_dim, 0, x.shape[time_dim] - k).flatten(time_dim - 1, time_dim)
            for key, x in states.items()}


def rollout(dynamics, start: dict, actions: torch.Tensor, task=None, sample: bool = False) -> torch.Tensor:
    """Features of a k-step open-loop rollout of the prior (its means unless `sample`) from `start` (M, ...) along
    actions (M, k, A): (M, k, F); feature j predicts the observation j+1 steps after the start."""
    state, feats = start, []
    for j in range(actions.shape[1]):
        state = dynamics.img_step(state, actions[:, j], task, sample=sample)
        feats.append(dynamics.get_feat(state))
    return torch.stack(feats, 1)


def student_predictions(dynamics, post: dict, data: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's k-step predictions from its posterior (B, T, ...) with gradients: features (M, k, Fs) and
    the valid mask (M, k)."""
    actions, valid = windows(data, k)
    return rollout(dynamics, starts(post, k, 1), actions.to(post["deter"].dtype)).float(), valid


@torch.no_grad()
def teacher_predictions(teacher, states: dict, data: dict, tasks, k: int, sample: bool = False) -> torch.Tensor:
    """The teacher's k-step predictions from its posterior states (V, B, T, ...) under the views `tasks`:
    (V, M, k, Ft). All views roll out together as one batch of V*M rows (view-major, `TaskBlocks`)."""
    v = len(tasks)
    actions, _ = windows(data, k)
    m = actions.shape[0]
    start = {key: x.flatten(0, 1) for key, x in starts(states, k, 2).items()}  # (V*M, ...)
    tiled = actions.unsqueeze(0).expand(v, *actions.shape).reshape(v * m, k, -1)
    # float32 as the teacher's filtering (task_features): rounding errors would compound over the k steps.
    with float32(actions.device):
        feats = rollout(teacher.dynamics, start, tiled, TaskBlocks(tasks, m), sample)
    return feats.float().reshape(v, m, k, -1)
