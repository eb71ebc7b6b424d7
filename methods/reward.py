"""`reward`: the student's reward prediction regresses onto the teacher's under the most relevant view.

L = coef * mean_{b,t}(r_student(s) - r_teacher(t_k*, k*))^2 where k* is the active view whose reward
head best predicts the target task's observed rewards (EMA of a softmax over the negative per-view
reward errors, so one noisy batch does not switch views); no trainable parameters, no pruning.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TeacherMethod


class Reward(TeacherMethod):
    name = "reward"

    def __init__(self, teacher, student_feat: int, config, behaviour=None, logger=None, verbose: bool = True):
        super().__init__(teacher, student_feat, config, behaviour, logger, verbose)
        self.coef = float(config["reward_distill_coef"])

    def world_model_loss(self, data: dict, post: dict, wm, step: int) -> tuple[torch.Tensor, dict]:
        s = wm.dynamics.get_feat(post).float()  # (B, T, Fs)
        data, s = self.subset(data, s)
        return self.run_update(lambda: self._reward_loss(data, s, wm), s, step)

    def _reward_loss(self, data: dict, s: torch.Tensor, wm):
        r_teacher, err, relevance = self.reward_relevance(data)  # (V, B, T), (V,), (V,)
        with torch.no_grad():
            # Among the active views only. index_select, not [pos]: indexing with a tensor reads it back.
            pos = self.ema[self._ids].argmax().view(1)
            target = r_teacher.index_select(0, pos).squeeze(0)  # (B, T)
        r_student = wm.predict_reward(s)  # (B, T)
        raw = self.coef * F.mse_loss(r_student.float(), target)
        names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
        names += [f"distill/reward_err_{self.task_names[i]}" for i in self.active_ids] + ["distill/reward_view"]
        stat_names, stats = self.relevance_stats(relevance[:, None])  # one relevance per batch here
        view = self._ids.index_select(0, pos).squeeze(0).to(err.dtype)
        return raw, names + stat_names, list(relevance) + list(err) + [view] + stats
