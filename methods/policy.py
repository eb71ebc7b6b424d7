"""`policy`: PolyTask's behaviour distillation in COMET's transfer setting. On real replay states the
student's actor is pulled toward the teacher actor's action under each active source-task view:

L = coef(n) * sum_{k active} max(floor, w_k) * mean_{b,t} |mu_S(s_bt) - pi_T(o_bt, k)|^2 / A

mu_S the student actor's mode at its posterior feature s, pi_T the behaviour actor fitted at pretraining
(relabelled behaviour cloning on the raw state o), w the relevance of the views: the EMA of how well
each view's reward head predicts the target's observed rewards (shared with `reward`), renormalised
over the active views; the least relevant view is pruned as in `comet`. `policy_coef` is annealed by
default: imitation should start the student, not bind it.
"""
from __future__ import annotations

import torch

from .base import MethodError, TeacherMethod
from .behaviour import STATE


class BehaviourMethod(TeacherMethod):
    """Shared by the methods that query behaviour teachers on the raw state of the student's batch."""

    prunes = True

    def __init__(self, teacher, student_feat: int, config, behaviour=None, logger=None, verbose: bool = True):
        super().__init__(teacher, student_feat, config, behaviour, logger, verbose)
        for kind in self.needs:
            if getattr(behaviour, kind, None) is None:
                raise MethodError(f"distill_mode '{self.name}' needs a teacher with a behaviour {kind}, but the "
                                  f"teacher file has none; pretrain it with --teacher_{kind}_steps N (e.g. 3000), "
                                  f"or pick another --distill_mode")

    def views(self, data: dict, task: torch.Tensor | None = None, relevance: bool = True):
        """The states the behaviour teachers read and how the views are weighted: (state (V, B, T, Ds), task
        ids for the behaviour nets, weights (V,), view labels, metric names and values). With `task` (B,)
        each sequence is read under its own source task (source data: V = 1, weight 1). Otherwise the views
        are the active tasks, weighted by the relevance EMA renormalised over them; `relevance` moves the
        EMA with this batch first (once per update)."""
        if STATE not in data:
            raise MethodError(f"distill_mode '{self.name}' reads the raw '{STATE}' of the student's batch; run the "
                              f"student with --obs state or --obs both")
        state = data[STATE]  # (B, T, Ds)
        if task is not None:
            return state.unsqueeze(0), task.unsqueeze(0), state.new_ones(1), ["source"], [], []
        names, values = [], []
        if relevance:
            _, err, batch_w = self.reward_relevance(data)  # moves the EMA
            names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
            names += [f"distill/reward_err_{self.task_names[i]}" for i in self.active_ids]
            values = list(batch_w) + list(err)
        w = self.ema[self._ids]
        w = w / w.sum().clamp_min(1e-12)  # (V,)
        v = len(self.active_ids)
        return state.unsqueeze(0).expand(v, *state.shape), self._ids, w, self.active_tasks, names, values


class Policy(BehaviourMethod):
    name = "policy"
    needs = ("actor",)
    weight_key = "policy_coef"

    def actor_loss(self, data: dict, feat: torch.Tensor, actor, step: int, task=None) -> tuple[torch.Tensor, dict]:
        """data: the preprocessed batch (B, T, ...); feat: the student's posterior features (B, T, F),
        detached; actor: the student's actor; `task` (B,) only on source data."""
        data, feat = self.subset(data, feat)
        return self.run_update(lambda: self._imitation(data, feat, actor, task), feat, step)

    def _imitation(self, data, feat, actor, task):
        state, ids, w, labels, names, values = self.views(data, task)
        with torch.no_grad():
            target = self.behaviour.actor(state, ids)  # (V, B, T, A)
        mine = actor(feat).mode()  # (B, T, A)
        assert mine.shape == target.shape[1:], (tuple(mine.shape), tuple(target.shape))
        dist = (mine.unsqueeze(0) - target).pow(2).mean(-1).mean((1, 2))  # (V,)
        raw = (torch.clamp(w, min=self.floor) * dist).sum()
        return raw, names + [f"distill/action_err_{label}" for label in labels], values + list(dist.detach())
