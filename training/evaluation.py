"""Evaluation: episodes of an agent's mode action on evaluation envs, optionally on a fixed goal set."""
from __future__ import annotations

import numpy as np

from .episodes import EpisodeBuilder, ended, merge_reset

GOAL_RULES = ("fixed", "run")


def goal_seeds(goal_seed: int, index: int, count: int) -> list[int]:
    """Reset seeds of the first `count` episodes of evaluation `index` on the goal set `goal_seed`.

    Episode j of evaluation i starts from the object and goal positions that the seed
    SeedSequence([goal_seed, i, j]) draws (envs.MetaWorldEnv.reset re-seeds its position generator), so
    every run with the same `goal_seed` sees the same positions at its i-th evaluation, whatever its own seed,
    method, number of eval envs or episodes per evaluation (a run with more episodes sees a longer list with
    the same start)."""
    return [int(np.random.SeedSequence([int(goal_seed), int(index), j]).generate_state(1)[0]) for j in range(count)]


def goal_rule(config) -> str:
    """One line for a report's protocol block: how the evaluation episodes' goals were chosen."""
    rule = config.get("eval_goals") if isinstance(config, dict) else getattr(config, "eval_goals", None)
    if rule == "fixed":
        seed = config.get("eval_goal_seed") if isinstance(config, dict) else config.eval_goal_seed
        return (f"fixed goal set {seed}: episode j of evaluation i starts from the positions seeded by "
                f"SeedSequence([{seed}, i, j]), the same in every run")
    if rule == "run":
        return "drawn by each run's own evaluation envs (seeded from the run's seed)"
    return "drawn by each run's own evaluation envs (the config predates eval_goals)"


def evaluate(agent, eval_envs, episodes: int, obs_keys, videos: list | None = None, film: int = 1,
             goals: tuple[int, int] | None = None) -> list[dict]:
    """Run `episodes` episodes with the mode action on `eval_envs` (an envs.VecEnv); returns the episodes, those
    of one round (one episode per env, started together) in env order.

    `agent` needs `act_dim` and `policy(obs, state, training=False) -> (action (n, A), state)`.
    `videos`: when a list, the frames of the first `film` returned episodes are appended to it, one uint8
    (T + 1, H, W, 3) array per episode in episode order (observed for pixel runs, rendered on request for state
    runs: `envs.VecEnv.frame`).
    `goals`: (goal_seed, evaluation index) to start episode j from `goal_seeds(goal_seed, index, ...)[j]`; None
    continues the envs' own position generators."""
    n = eval_envs.n
    rounds = -(-episodes // n)
    seeds = goal_seeds(*goals, rounds * n) if goals is not None else None
    done_eps: list[dict] = []
    for r in range(rounds):
        wanted = 0 if videos is None else min(film, episodes) - len(done_eps)
        eps, clips = _one_round(agent, eval_envs, obs_keys, max(0, min(wanted, n)),
                                seeds[r * n:(r + 1) * n] if seeds is not None else None)
        for ep, clip in zip(eps, clips):
            if clip is not None and len(done_eps) < episodes:
                videos.append(np.stack(clip))
            done_eps.append(ep)
    return done_eps[:episodes]


def _one_round(agent, eval_envs, obs_keys, film: int = 0, seeds: list[int] | None = None
               ) -> tuple[list[dict], list[list | None]]:
    """One episode per eval env, all started together (env i from reset seed `seeds[i]` when given): (episodes in
    env order, their frames: a list for the first `film` envs, None for the others)."""
    n = eval_envs.n
    obs = eval_envs.reset(seeds=seeds)
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
