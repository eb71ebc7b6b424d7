"""Facts of the data contract, defined once and imported everywhere (docs/architecture.md).

Legend: L episode length (policy steps + 1; entry 0 is the reset observation).
"""
from __future__ import annotations

import numpy as np

# Observation keys an env emits and a model reads, per `obs` mode.
OBS_KEYS = {"pixel": ("image",), "state": ("state",), "both": ("image", "state")}
OBS_MODES = tuple(OBS_KEYS)
STATE_DIM = 39  # Meta-World's goal-observable observation vector
ACTION_DIM = 4  # Meta-World's end-effector delta (3) + gripper (1)

# Keys every transition (step dict) carries besides the observation, stored per entry of an episode.
STEP_KEYS = ("reward", "discount", "success", "is_first", "is_terminal")
# Keys every episode carries besides the observation: the action that led to each entry, then STEP_KEYS.
EPISODE_KEYS = ("action", *STEP_KEYS)
# Keys a world model trains on besides the observation.
MODEL_KEYS = ("action", "reward", "discount", "is_first")

# Meta-World's rule (success at any step) and the final-step rule, as written into every results file.
SUCCESS_RULES = {"success_any": "any step: info['success'] true at some step of the episode",
                 "success_final": "final step: info['success'] true at the last step of the episode"}


def prefill_episode(start_step: int, prefill: int) -> bool:
    """Whether a student episode that began at env step `start_step` holds prefill steps (uniform random actions).

    Such episodes are training data only: no success or return figure counts them."""
    return start_step < prefill


def success_any(success) -> bool:
    """Whether an episode succeeded at any step. `success` (L,); entry 0 (the reset) is 0 by the env contract."""
    return bool(np.max(np.asarray(success), initial=0.0) > 0)


def success_final(success) -> bool:
    """Whether an episode's last step succeeded. `success` (L,)."""
    success = np.asarray(success)
    return bool(len(success) and success[-1] > 0)
