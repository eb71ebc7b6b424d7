"""The acting policy as one module: encoder + one RSSM filter step + actor mode, deterministic.

`ActingPolicy` is what runs in the env, what quantize.py quantizes and what export.py exports. It is built on
the public WorldModel/RSSM/Actor API, so it follows whatever those compute. It differs from `Agent.policy` in
one deliberate way: the posterior is its mean (`sample=False`), not a sample, so the same observations always
give the same actions (needed to compare variants and to check an export action by action).

Shape legend: n envs, A action size, S stoch size (S, V when discrete), D deter size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ActingPolicy(nn.Module):
    """forward(obs {key: (n, ...)}, is_first (n,) bool, stoch, deter, action (n, A)) -> (action, stoch, deter).

    `obs['image']` is uint8 (n, H, W, 3) as the env gives it, `obs['state']` float32 (n, 39). The recurrent
    state (stoch, deter, previous action) is zeroed where `is_first`. Inputs and outputs are float32 whatever
    the module's own dtype (a bf16/fp16 variant casts at its boundary)."""

    def __init__(self, agent):
        super().__init__()
        wm = agent.wm
        self.obs_keys = tuple(wm.obs_keys)
        self.encoders = wm.encoders
        self.dynamics = wm.dynamics
        self.actor = agent.behavior.actor
        self.act_dim = agent.act_dim

    @property
    def device(self) -> torch.device:
        return next(self.dynamics.parameters()).device

    def initial(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero (stoch, deter, action) for n envs, float32, on the module's device."""
        device = self.device
        state = self.dynamics.initial(n, device, torch.float32)
        return state["stoch"], state["deter"], torch.zeros(n, self.act_dim, device=device)

    def forward(self, obs: dict, is_first: torch.Tensor, stoch: torch.Tensor, deter: torch.Tensor,
                action: torch.Tensor):
        dtype = next(p for p in self.dynamics.parameters()).dtype
        parts = []
        for key in self.obs_keys:
            x = obs[key]
            if key == "image":
                x = x.float() / 255.0 - 0.5  # as WorldModel.preprocess
            parts.append(self.encoders[key](x.to(dtype)))
        embed = parts[0] if len(parts) == 1 else torch.cat(parts, -1)  # (n, E)
        prev = {"stoch": stoch.to(dtype), "deter": deter.to(dtype)}
        post, _ = self.dynamics.obs_step(prev, action.to(dtype), embed, is_first, sample=False)
        out = self.actor(self.dynamics.get_feat(post)).mode()  # (n, A)
        return out.float(), post["stoch"].float(), post["deter"].float()


class PolicyAgent:
    """Adapter with Agent's acting interface (`policy(obs, state, training) -> (action, state)`, `act_dim`) around
    an ActingPolicy, so the one evaluation loop (`training.evaluation.evaluate`) runs any variant."""

    def __init__(self, module, base: ActingPolicy):
        """module: what runs (`base` itself, a compiled or exported copy); base: the ActingPolicy it came from."""
        self.module, self.base = module, base
        self.act_dim, self.obs_keys = base.act_dim, base.obs_keys

    @torch.inference_mode()
    def policy(self, obs: dict, state=None, training: bool = False):
        """Actions (n, A) for the observations on the policy's device; one read of the device (the actions)."""
        device = self.base.device
        to = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)
        inputs = {k: to(obs[k]) for k in self.obs_keys}
        is_first = to(np.asarray(obs["is_first"], bool))
        if state is None:
            state = self.base.initial(len(is_first))
        action, stoch, deter = self.module(inputs, is_first, *state)
        out = action.cpu().numpy().astype(np.float32)
        assert np.all(np.abs(out) <= 1.0), f"policy produced actions outside [-1, 1]: {np.abs(out).max()}"
        return out, (stoch, deter, action)
