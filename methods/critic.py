"""`critic`: KTM-DRL's online stage in the transfer setting. The student's actor objective adds the
frozen teacher critic's value of the student's action on real replay states, under the relevant views:

L_actor += -coef(n) * sum_{k active} w_k * mean_{b,t} Q_T(o_bt, mu_S(s_bt), k)

(weight 1 by default, as in KTM-DRL; Q_T in reward units, the units of the student's own returns; w as
in `policy`). Optional offline warm start (`critic_warmup` updates, KTM-DRL's offline stage) on the
source datasets before the online phase: each update trains the student world model on a task-balanced
source batch (so its latents mean something on source states), the actor ascends Q_T under each
sequence's own task, and the critic regresses onto Q_T of the action the data took (`critic_value_coef`
also keeps that regression on during the online phase under the relevance views; 0 by default).
"""
from __future__ import annotations

import torch

from .base import MethodError
from .policy import BehaviourMethod


class Critic(BehaviourMethod):
    name = "critic"
    needs = ("critic",)
    weight_key = "critic_coef"

    def __init__(self, teacher, student_feat: int, config, behaviour=None, logger=None, verbose: bool = True):
        super().__init__(teacher, student_feat, config, behaviour, logger, verbose)
        self.warmup_updates = int(config["critic_warmup"])
        self.value_coef = float(config["critic_value_coef"])
        if self.warmup_updates < 0 or self.value_coef < 0:
            raise MethodError(f"critic_warmup and critic_value_coef must be >= 0, got {self.warmup_updates}, "
                              f"{self.value_coef}")
        # The critic hook exists only when it has a weight online (a hook that is None is never called).
        self.critic_loss = self.value_regression if self.value_coef > 0 else None
        self.register_buffer("warmed", torch.zeros((), dtype=torch.long))  # warm-up updates done (resume)

    def actor_loss(self, data: dict, feat: torch.Tensor, actor, step: int, task=None) -> tuple[torch.Tensor, dict]:
        data, feat = self.subset(data, feat)
        return self.run_update(lambda: self.ascend(data, feat, actor, task), feat, step)

    def ascend(self, data, feat, actor, task):
        state, ids, w, labels, names, values = self.views(data, task)
        mine = actor(feat).mode()  # (B, T, A)
        action = mine.unsqueeze(0).expand(state.shape[0], *mine.shape)  # (V, B, T, A)
        q = self.behaviour.critic(state, action, ids).mean((1, 2))  # (V,), gradients reach the action only
        raw = -(w * q).sum()
        return raw, names + [f"distill/teacher_q_{label}" for label in labels], values + list(q.detach())

    def value_regression(self, data: dict, feat: torch.Tensor, critic, step: int, task=None, coef=None):
        """0.5 * mean (V_S(s_t) - Q_T(o_t, a_t, k))^2 over the views (weights w), a_t the action the data
        took in state t (`action[t + 1]`), so the last position of each window has none."""
        # The actor hook of the same update already moved the relevance EMA with this batch.
        state, ids, w, *_ = self.views(data, task, relevance=False)
        taken = data["action"][:, 1:]  # (B, T-1, A)
        with torch.no_grad():
            target = self.behaviour.critic(state[:, :, :-1], taken.unsqueeze(0).expand(state.shape[0], *taken.shape),
                                           ids)  # (V, B, T-1)
        value = critic(feat[:, :-1])  # (B, T-1)
        loss = (w * 0.5 * (value.unsqueeze(0) - target).pow(2).mean((1, 2))).sum()
        scale = self.value_coef if coef is None else coef
        return scale * loss, {"distill/critic_value_loss": loss.detach()}

    # --- offline warm start --------------------------------------------------------------------------

    @property
    def warmup_due(self) -> int:
        """Warm-up updates still to run (0 once done; resumed runs do not repeat it)."""
        return max(self.warmup_updates - int(self.warmed), 0)
