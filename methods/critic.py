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
from torch import nn

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
        self.critic_loss = self._value_regression if self.value_coef > 0 else None
        self.register_buffer("warmed", torch.zeros((), dtype=torch.long))  # warm-up updates done (resume)

    def actor_loss(self, data: dict, feat: torch.Tensor, actor, step: int, task=None) -> tuple[torch.Tensor, dict]:
        data, feat = self.subset(data, feat)
        return self.run_update(lambda: self._ascend(data, feat, actor, task), feat, step)

    def _ascend(self, data, feat, actor, task):
        state, ids, w, labels, names, values = self.views(data, task)
        mine = actor(feat).mode()  # (B, T, A)
        action = mine.unsqueeze(0).expand(state.shape[0], *mine.shape)  # (V, B, T, A)
        q = self.behaviour.critic(state, action, ids).mean((1, 2))  # (V,), gradients reach the action only
        raw = -(w * q).sum()
        return raw, names + [f"distill/teacher_q_{label}" for label in labels], values + list(q.detach())

    def _value_regression(self, data: dict, feat: torch.Tensor, critic, step: int, task=None, coef=None):
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
        return scale * loss, {"distill/critic_value_loss": float(loss.detach())}

    # --- offline warm start --------------------------------------------------------------------------

    @property
    def warmup_due(self) -> int:
        """Warm-up updates still to run (0 once done; resumed runs do not repeat it)."""
        return max(self.warmup_updates - int(self.warmed), 0)

    def source_batches(self, config):
        """Task-balanced batches of the source datasets for the warm-up: the folders of `source_task_dirs`
        when given, else those the teacher was pretrained on (its stored config)."""
        import configs
        from cli import UsageError
        from training.sources import TaskBatcher, load_sources, model_keys

        dirs = list(config["source_task_dirs"]) or list(self.teacher.config["source_task_dirs"])
        cfg = configs.Config({**config, "source_tasks": list(self.task_names), "source_task_dirs": dirs})
        try:
            sources, _, _ = load_sources(cfg)
            keys = model_keys(cfg.obs)
            return TaskBatcher(sources, cfg.batch_size, cfg.batch_length, int(cfg.seed) + 17, "mixed", keys)
        except UsageError as err:
            raise MethodError(f"--critic_warmup needs the source datasets ({err}); pass their folders with "
                              f"--source_task_dirs in the teacher's task order {list(self.task_names)}") from None

    def warmup(self, agent, batches, log=print) -> dict:
        """Run the remaining warm-up updates on source batches (`batches.sample(i)` -> numpy (B, T, ...) with
        'task' (B,)): world model, actor (ascend Q_T) and critic (regress Q_T) of `agent`. Returns the last
        update's metrics."""
        from models.behavior import Behavior

        wm, beh, c = agent.wm, agent.behavior, agent.config
        metrics: dict = {}
        start = int(self.warmed)
        for i in range(start, self.warmup_updates):
            data = wm.preprocess(batches.sample(i))
            loss, metrics, post = wm.loss(data)
            agent.wm_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(wm.parameters(), c["model_grad_clip"])
            agent.wm_opt.step()
            feat = wm.dynamics.get_feat(post).detach()
            actor_loss = self._ascend(data, feat, beh.actor, data["task"])[0]
            Behavior._update(beh.actor_opt, beh.actor, actor_loss, c["actor_grad_clip"])
            critic_loss, _ = self._value_regression(data, feat, beh.critic, 0, data["task"], coef=1.0)
            Behavior._update(beh.critic_opt, beh.critic, critic_loss, c["critic_grad_clip"])
            self.warmed.fill_(i + 1)
            metrics = {**metrics, "warmup/actor_loss": float(actor_loss.detach()),
                       "warmup/critic_loss": float(critic_loss.detach())}
        with torch.no_grad():  # the online phase starts from the warmed critic
            for slow, fast in zip(beh.slow_critic.parameters(), beh.critic.parameters()):
                slow.copy_(fast)
        if self.warmup_updates > start:
            log(f"[distill] critic warm-up: {self.warmup_updates - start} updates on source data "
                f"(actor loss {metrics['warmup/actor_loss']:.3g}, critic loss {metrics['warmup/critic_loss']:.3g})")
        return metrics
