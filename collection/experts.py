"""One episode of a Meta-World scripted expert with action noise, determined by (seed, task, index).

Legend: L episode length, A action size.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np

from tools import ACTION_DIM, STEP_KEYS


def episode_seeds(seed: int, env_name: str, index: int) -> tuple[int, int]:
    """(env seed, action-noise seed) of one episode, derived from (seed, task, index) only.

    crc32 rather than hash(): Python salts str hashes per process.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(env_name.encode()), int(index)]).generate_state(2)
    return int(state[0]), int(state[1])


def expert_policy(env_name: str):
    """The scripted expert for an env name, e.g. SawyerDrawerCloseV3Policy for 'drawer-close-v3'."""
    from envs import headless_gl

    headless_gl()  # metaworld imports mujoco, which fixes the GL backend
    from metaworld.policies import ENV_POLICY_MAP

    if env_name not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted policy for {env_name}")
    return ENV_POLICY_MAP[env_name]()


def run_episode(env, policy, env_seed: int, noise_seed: int, noise: float, random_frac: float,
                keys: tuple[str, ...]) -> dict:
    """Roll out one episode of the expert with action noise; returns the episode dict.

    `env` must observe the state (the expert reads it); `keys` are the observation keys to keep.
    """
    rng = np.random.default_rng(noise_seed)
    step = env.reset(seed=env_seed)
    steps = [step]
    actions = [np.zeros(ACTION_DIM, np.float32)]
    while not step["is_last"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn about their own gains on every call
            expert = np.asarray(policy.get_action(step["state"].astype(np.float64)), dtype=np.float64)
        gaussian = rng.normal(0.0, 1.0, ACTION_DIM)
        uniform = rng.uniform(-1.0, 1.0, ACTION_DIM)
        # Draw every random number every step so that one setting never shifts another's stream.
        action = uniform if rng.random() < random_frac else expert + noise * gaussian
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        step = env.step(action)
        steps.append(step)
        actions.append(action)
    episode = {key: np.stack([s[key] for s in steps]) for key in keys}  # (L, ...)
    episode["action"] = np.stack(actions)  # (L, A), action[0] = 0
    for key in STEP_KEYS:
        dtype = bool if key in ("is_first", "is_terminal") else np.float32
        episode[key] = np.array([s[key] for s in steps], dtype=dtype)  # (L,)
    return episode
