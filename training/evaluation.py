"""Evaluation: episodes of an agent's mode action on evaluation envs."""
from __future__ import annotations

import numpy as np

from .episodes import EpisodeBuilder, ended, merge_reset


def evaluate(agent, eval_envs, episodes: int, obs_keys, frames: list | None = None) -> list[dict]:
    """Run `episodes` episodes with the mode action on `eval_envs` (an envs.VecEnv); returns the episodes.

    `agent` needs `act_dim` and `policy(obs, state, training=False) -> (action (n, A), state)`.
    `frames`: when a list, the frames of the first episode of eval env 0 are appended to it (uint8 (H, W, 3);
    observed for pixel runs, rendered on request for state runs: `envs.VecEnv.frame`)."""
    done_eps: list[dict] = []
    while len(done_eps) < episodes:
        done_eps.extend(_one_round(agent, eval_envs, obs_keys, frames if not done_eps else None))
    return done_eps[:episodes]


def _one_round(agent, eval_envs, obs_keys, frames: list | None = None) -> list[dict]:
    """One episode per eval env, all started together (frames of env 0's episode into `frames`)."""
    n = eval_envs.n
    obs = eval_envs.reset()
    builder = EpisodeBuilder(n, obs_keys, agent.act_dim)
    for i in range(n):
        builder.start(i, obs)
    state, running, out = None, np.ones(n, bool), []
    if frames is not None:
        frames.append(eval_envs.frame(obs, 0))
    while running.any():
        action, state = agent.policy(obs, state, training=False)
        obs = eval_envs.step(action)
        if frames is not None and running[0]:
            frames.append(eval_envs.frame(obs, 0))
        for i in np.flatnonzero(running):
            builder.add(i, obs, action[i])
            if ended(obs, i):
                running[i] = False
                out.append(builder.finish(i))
        if running.any() and not running.all():
            # Envs that finished early idle on a fresh episode whose steps are discarded.
            idle = [int(i) for i in np.flatnonzero(~running) if ended(obs, i)]
            if idle:
                obs = merge_reset(obs, idle, eval_envs.reset(idle))
    return out
