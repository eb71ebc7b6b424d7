"""The critic-guided method's optional offline warm start (`critic_warmup` updates, KTM-DRL's offline stage) on
the source datasets, before the online phase: world model, actor (ascend the teacher's Q) and critic (regress it).
The losses are the method's (methods/critic.py); the loop is here."""
from __future__ import annotations

import torch

import configs
from methods.base import MethodError
from models.behavior import Behavior
from models.metrics import read
from tools import UsageError
from training.sources import TaskBatcher, load_sources, model_keys


def source_batches(method, config):
    """Task-balanced batches of the source datasets for the warm-up: the folders of `source_task_dirs`
    when given, else those the teacher was pretrained on (its stored config)."""
    dirs = list(config["source_task_dirs"]) or list(method.teacher.config["source_task_dirs"])
    cfg = configs.Config({**config, "source_tasks": list(method.task_names), "source_task_dirs": dirs})
    try:
        sources, _, _ = load_sources(cfg)
        keys = model_keys(cfg.obs)
        return TaskBatcher(sources, cfg.batch_size, cfg.batch_length, int(cfg.seed) + 17, "mixed", keys)
    except UsageError as err:
        raise MethodError(f"--critic_warmup needs the source datasets ({err}); pass their folders with "
                          f"--source_task_dirs in the teacher's task order {list(method.task_names)}") from None


def warmup(method, agent, batches, log=print) -> dict:
    """Run the remaining warm-up updates on source batches (`batches.sample(i)` -> numpy (B, T, ...) with
    'task' (B,)): world model, actor (ascend Q_T) and critic (regress Q_T) of `agent`. Returns the last
    update's metrics as floats (the only read from the device)."""
    wm, beh, c = agent.wm, agent.behavior, agent.config
    metrics: dict = {}
    start = int(method.warmed)
    for i in range(start, method.warmup_updates):
        data = wm.preprocess(batches.sample(i))
        loss, metrics, post = wm.loss(data)
        Behavior.optimizer_step(agent.wm_opt, wm, loss, c["model_grad_clip"])  # a non-finite update is skipped
        feat = wm.dynamics.get_feat(post).detach()
        actor_loss = method.ascend(data, feat, beh.actor, data["task"])[0]
        Behavior.optimizer_step(beh.actor_opt, beh.actor, actor_loss, c["actor_grad_clip"])
        critic_loss, _ = method.value_regression(data, feat, beh.critic, 0, data["task"], coef=1.0)
        Behavior.optimizer_step(beh.critic_opt, beh.critic, critic_loss, c["critic_grad_clip"])
        method.warmed.fill_(i + 1)
        metrics = {**metrics, "warmup/actor_loss": actor_loss.detach(), "warmup/critic_loss": critic_loss.detach()}
    metrics = read(metrics)
    with torch.no_grad():  # the online phase starts from the warmed critic
        for slow, fast in zip(beh.slow_critic.parameters(), beh.critic.parameters()):
            slow.copy_(fast)
    if method.warmup_updates > start:
        log(f"[distill] critic warm-up: {method.warmup_updates - start} updates on source data "
            f"(actor loss {metrics['warmup/actor_loss']:.3g}, critic loss {metrics['warmup/critic_loss']:.3g})")
    return metrics
