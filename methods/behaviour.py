"""Behaviour teachers (the networks, their checkpoint entry, their fit to a student), fitted on the source
datasets by training/behaviour.py: a task-conditioned actor by relabelled behaviour
cloning (PolyTask) and a task-conditioned critic of the expert behaviour (fitted Q evaluation).

Relabelling: every state of task k's dataset is labelled with task k's scripted expert action (the
Meta-World policy that collected it, `collection.experts.expert_policy`), so the actor learns the expert's
behaviour rather than the noisy actions in the files. Both teachers read the raw 39-d state, not the
teacher world model's latent: the experts are functions of that state, so it is sufficient and exact;
the behaviour teachers then do not depend on how well the world model was fitted; and the student's
replay holds the same state, so the teachers can be queried on real replay states. A pixel-only
dataset cannot be relabelled: the behaviour teachers need `state` in the source datasets (collect with
`--obs state` or `both`) and in the student's observations.

Critic: Q(o, a, k) ~ r + gamma * Q'(o', a_E(o'), k) on the dataset's transitions, a_E the relabelled
expert action at the next state (the value of following the expert), with a conservative term
(CQL-style: tau * logsumexp over random actions and the data action, minus the data action's value)
because the student's actor ascends this critic and an offline critic is otherwise free to value
actions the data never tried. Values are learned in units of `value_scale` (reward scale / (1 - gamma))
and returned in reward units, the units of the student's own returns.

Shape legend: N transitions, K source tasks, V views, B batch, A action size, Ds state size (39).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import tools
from tools import UsageError
from models.networks import MLP

STATE = "state"


class BehaviourError(UsageError, ValueError):
    """Source data or a teacher file the behaviour teachers cannot use; the message says what to do."""


class _StateNet(nn.Module):
    """A task-conditioned MLP on the normalised state (and, for critics, an action)."""

    def __init__(self, state_dim: int, act_dim: int, n_tasks: int, units: int, layers: int, out: int, extra: int):
        super().__init__()
        self.sizes = {"state_dim": state_dim, "act_dim": act_dim, "n_tasks": n_tasks, "units": units, "layers": layers}
        self.state_dim, self.act_dim, self.n_tasks = state_dim, act_dim, n_tasks
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))
        self.net = MLP(state_dim + extra, out, units, layers, "elu", True, n_tasks=n_tasks)

    def set_normaliser(self, states: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(states.mean(0)))
        self.std.copy_(torch.as_tensor(states.std(0) + 1e-3))

    def norm(self, state: torch.Tensor) -> torch.Tensor:
        assert state.shape[-1] == self.state_dim, (state.shape, self.state_dim)
        return (state.float() - self.mean) / self.std


class TeacherActor(_StateNet):
    """pi(state (..., Ds), task) -> action (..., A) in [-1, 1]; `task` as for any task-conditioned layer."""

    def __init__(self, state_dim: int, act_dim: int, n_tasks: int, units: int = 256, layers: int = 2):
        super().__init__(state_dim, act_dim, n_tasks, units, layers, act_dim, 0)

    def forward(self, state: torch.Tensor, task) -> torch.Tensor:
        return torch.tanh(self.net(self.norm(state), task))


class TeacherCritic(_StateNet):
    """Q(state (..., Ds), action (..., A), task) -> value (...) in reward units."""

    def __init__(self, state_dim: int, act_dim: int, n_tasks: int, units: int = 256, layers: int = 2):
        super().__init__(state_dim, act_dim, n_tasks, units, layers, 1, act_dim)
        self.register_buffer("value_scale", torch.ones(()))

    def normalised(self, state: torch.Tensor, action: torch.Tensor, task) -> torch.Tensor:
        return self.net(torch.cat([self.norm(state), action.float()], -1), task).squeeze(-1)

    def forward(self, state: torch.Tensor, action: torch.Tensor, task) -> torch.Tensor:
        return self.normalised(state, action, task) * self.value_scale


@dataclass
class BehaviourTeachers:
    """The behaviour teachers of one teacher checkpoint (either may be None)."""
    actor: TeacherActor | None = None
    critic: TeacherCritic | None = None


# --- checkpoint ---------------------------------------------------------------------------------------

def payload(teachers: BehaviourTeachers) -> dict:
    """The `behaviour` entry of a teacher checkpoint: per fitted net its sizes and weights."""
    out = {}
    for kind in ("actor", "critic"):
        net = getattr(teachers, kind)
        if net is not None:
            out[kind] = {"sizes": dict(net.sizes), "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    return out


def load(meta: dict, path="teacher", device="cpu") -> BehaviourTeachers:
    """Rebuild the behaviour teachers stored in a teacher checkpoint's payload (`meta` of
    `models.load_teacher`) and load their weights strictly; none stored gives empty BehaviourTeachers."""
    stored = meta.get("behaviour") or {}
    out = BehaviourTeachers()
    for kind, cls in (("actor", TeacherActor), ("critic", TeacherCritic)):
        if kind not in stored:
            continue
        try:
            net = cls(**stored[kind]["sizes"])
            net.load_state_dict(stored[kind]["state_dict"], strict=True)
        except (KeyError, TypeError, RuntimeError) as err:
            raise tools.CheckpointError(f"{path}: stored behaviour {kind} does not load: "
                                             f"{' '.join(str(err).split())[:500]}") from None
        setattr(out, kind, net.to(device).eval())
    return out


def check_compatible(teachers: BehaviourTeachers, act_dim: int, student_obs_shapes: dict | None,
                     needs: tuple[str, ...] = ()) -> None:
    """Raise BehaviourError unless the stored behaviour teachers fit the student's actions and states."""
    if needs and student_obs_shapes is not None and STATE not in student_obs_shapes:
        raise BehaviourError(f"the behaviour {needs[0]} reads the raw 39-d '{STATE}' of the student's replay, but "
                             f"the student observes only {sorted(student_obs_shapes)}; run it with --obs both")
    for kind in ("actor", "critic"):
        net = getattr(teachers, kind)
        if net is None:
            continue
        if net.act_dim != int(act_dim):
            raise BehaviourError(f"the teacher's behaviour {kind} has action size {net.act_dim} but the target "
                                 f"task's is {act_dim}; use a teacher pretrained on tasks with the target's action size")
        have = tuple((student_obs_shapes or {}).get(STATE, ()))
        if student_obs_shapes is not None and have and have != (net.state_dim,):
            raise BehaviourError(f"the teacher's behaviour {kind} reads a {net.state_dim}-d state but the student's "
                                 f"state is {have}")
