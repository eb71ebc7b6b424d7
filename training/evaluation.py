"""Evaluation: episodes of an agent's mode action on evaluation envs."""
from __future__ import annotations

import numpy as np

from .episodes import EpisodeBuilder, ended, merge_reset


def evaluate(agent, eval_envs, episodes: int, obs_keys, videos: list | None = None, film: int = 1) -> list[dict]:
    """Run `episodes` episodes with the mode action on `eval_envs` (an envs.VecEnv); returns the episodes, those
    of one round (one episode per env, started together) in env order.

    `agent` needs `act_dim` and `policy(obs, state, training=False) -> (action (n, A), state)`.
    `videos`: when a list, the frames of the first `film` returned episodes are appended to it, one uint8
    (T + 1, H, W, 3) array per episode in episode order (observed for pixel runs, rendered on request for state
    runs: `envs.VecEnv.frame`)."""
    done_eps: list[dict] = []
    while len(done_eps) < episodes:
        wanted = 0 if videos is None else min(film, episodes) - len(done_eps)
        eps, clips = _one_round(agent, eval_envs, obs_keys, max(0, min(wanted, eval_envs.n)))
        for ep, clip in zip(eps, clips):
            if clip is not None and len(done_eps) < episodes:
                videos.append(np.stack(clip))
            done_eps.append(ep)
    return done_eps[:episodes]


def _one_round(agent, eval_envs, obs_keys, film: int = 0) -> tuple[list[dict], list[list | None]]:
    """One episode per eval env, all started together: (episodes in env order, their frames: a list for the
    first `film` envs, None for the others)."""
    n = eval_envs.n
    obs = eval_envs.reset()
    builder = EpisodeBuilder(n, obs_keys, agent.act_dim)
    for i in range(n):
        builder.start(i, obs)
    state, running, out = None, np.ones(n, bool), [None] * n
    clips = [[eval_envs.frame(obs, i)] if i < film else None for i in range(n)]
    while running.any():
        action, state = agent.policy(obs, state, training=False)
        obs = eval_envs.step(action)
        for i in range(film):
            if running[i]:
                clips[i].append(eval_envs.frame(obs, i))
        for i in np.flatnonzero(running):
            builder.add(i, obs, action[i])
            if ended(obs, i):
                running[i] = False
                out[i] = builder.finish(i)
        if running.any() and not running.all():
            # Envs that finished early idle on a fresh episode whose steps are discarded.
            idle = [int(i) for i in np.flatnonzero(~running) if ended(obs, i)]
            if idle:
                obs = merge_reset(obs, idle, eval_envs.reset(idle))
    return out, clips
