"""Student behavior: actor, critic and slow critic learned in imagination (Dreamer).

Starting from every posterior state of a training batch, the world model's prior is rolled forward
`imag_horizon` steps with actions from the actor. Imagined rewards and slow-critic values give
lambda-returns; the actor maximises them (through the dynamics, REINFORCE or a mix) plus an entropy
bonus, and the critic regresses them.

Shape legend: B batch, T time, M = B*T start states, Hz imagination horizon, F feature size,
A action size.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import configs

from .networks import MLP
from .optim import adam, step_if

ACTOR_DISTS = ("tanh_normal", "trunc_normal")
IMAG_GRADIENTS = ("dynamics", "reinforce", "both")


# --- action distributions ---------------------------------------------------------------------------

class TanhNormal:
    """Normal squashed by tanh: samples and mode lie in [-1, 1] by construction.

    The entropy has no closed form; `entropy()` is the one-sample estimate -log p(a) at a
    reparameterised sample, so its gradient reaches the mean and the std.
    """

    # atanh(1 - 1e-6) ~ 7.25: log_prob of actions on the boundary stays finite.
    _EDGE = 1e-6

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std
        # No argument checks: each would read the device (a host sync) in every imagination step.
        self.base = torch.distributions.Normal(mean, std, validate_args=False)

    def sample(self) -> torch.Tensor:
        """Reparameterised sample (..., A) in [-1, 1]."""
        return torch.tanh(self.base.rsample())

    def mode(self) -> torch.Tensor:
        """Deterministic action tanh(mean) for evaluation."""
        return torch.tanh(self.mean)

    def _log_prob_pre(self, x: torch.Tensor) -> torch.Tensor:
        # log|d tanh(x)/dx| = log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|.
        log_det = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
        return (self.base.log_prob(x) - log_det).sum(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log density (...) of actions (..., A) in [-1, 1]."""
        edge = 1.0 - self._EDGE
        return self._log_prob_pre(torch.atanh(action.clamp(-edge, edge)))

    def entropy(self) -> torch.Tensor:
        """One-sample entropy estimate (...)."""
        return -self._log_prob_pre(self.base.rsample())


class TruncNormal:
    """Normal truncated to [-1, 1]: sampled by the inverse CDF (reparameterised), exact log_prob and
    entropy. The mean is squashed by tanh upstream, so the interval always holds the mode."""

    _LOW, _HIGH = -1.0, 1.0
    _EPS = 1e-6

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std
        self.alpha = (self._LOW - mean) / std
        self.beta = (self._HIGH - mean) / std
        self.cdf_alpha = _normal_cdf(self.alpha)
        self.mass = (_normal_cdf(self.beta) - self.cdf_alpha).clamp(min=self._EPS)

    def sample(self) -> torch.Tensor:
        """Reparameterised sample (..., A) in [-1, 1]."""
        u = torch.rand_like(self.mean)
        p = (self.cdf_alpha + u * self.mass).clamp(self._EPS, 1.0 - self._EPS)
        x = self.mean + self.std * math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
        # Rounding can step just outside the interval; clamp the value, keep the gradient.
        return x + (x.clamp(self._LOW, self._HIGH) - x).detach()

    def mode(self) -> torch.Tensor:
        return self.mean.clamp(self._LOW, self._HIGH)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) / self.std
        log_pdf = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - torch.log(self.std)
        return (log_pdf - torch.log(self.mass)).sum(-1)

    def entropy(self) -> torch.Tensor:
        phi = lambda x: torch.exp(-0.5 * x ** 2) / math.sqrt(2 * math.pi)
        edge = (self.alpha * phi(self.alpha) - self.beta * phi(self.beta)) / (2 * self.mass)
        ent = 0.5 * math.log(2 * math.pi * math.e) + torch.log(self.std * self.mass) + edge
        return ent.sum(-1)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class Actor(nn.Module):
    """Policy MLP: feature (..., F) -> action distribution over [-1, 1]^A."""

    def __init__(self, feat: int, act_dim: int, units: int, layers: int, act: str = "elu", norm: bool = False,
                 dist: str = "tanh_normal", init_std: float = 1.0, min_std: float = 0.1, mean_scale: float = 5.0):
        super().__init__()
        if dist not in ACTOR_DISTS:
            raise ValueError(f"actor_dist must be one of {ACTOR_DISTS}, got '{dist}'")
        self.dist, self.act_dim = dist, act_dim
        self.min_std, self.mean_scale = float(min_std), float(mean_scale)
        # softplus(raw + shift) + min_std == init_std at raw = 0.
        self.std_shift = math.log(math.expm1(max(init_std - min_std, 1e-3)))
        self.net = MLP(feat, 2 * act_dim, units, layers, act, norm)

    def forward(self, feat: torch.Tensor):
        mean, raw_std = self.net(feat).float().chunk(2, -1)  # (..., A) each
        if self.dist == "tanh_normal":
            # Soft-clip the pre-tanh mean (as Dreamer does) so the policy cannot saturate without limit.
            mean = self.mean_scale * torch.tanh(mean / self.mean_scale)
            std = F.softplus(raw_std + self.std_shift) + self.min_std
            return TanhNormal(mean, std)
        std = 2.0 * torch.sigmoid(raw_std / 2.0) + self.min_std
        return TruncNormal(torch.tanh(mean), std)


class Critic(nn.Module):
    """Value MLP: feature (..., F) -> value (...). Trained as the mean of a unit Gaussian (MSE)."""

    def __init__(self, feat: int, units: int, layers: int, act: str = "elu", norm: bool = False):
        super().__init__()
        self.net = MLP(feat, 1, units, layers, act, norm)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat).squeeze(-1).float()


# --- returns ------------------------------------------------------------------------------------------

def lambda_return(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lambda_: float) -> torch.Tensor:
    """TD(lambda) targets for states 0..Hz-1 of an imagined trajectory.

    reward (Hz, M): r_{t+1}, received on reaching state t+1; value (Hz+1, M): V(s_0..s_Hz);
    discount (Hz, M): gamma_{t+1} (gamma times the continuation of state t+1).
    R_Hz = V(s_Hz),  R_t = r_{t+1} + gamma_{t+1} ((1 - lambda) V(s_{t+1}) + lambda R_{t+1}).
    Returns (Hz, M).
    """
    horizon = reward.shape[0]
    assert value.shape[0] == horizon + 1 and discount.shape == reward.shape, (reward.shape, value.shape,
                                                                               discount.shape)
    inputs = reward + discount * (1.0 - lambda_) * value[1:]  # (Hz, M)
    out = torch.empty_like(inputs)
    last = value[-1]
    for t in reversed(range(horizon)):
        last = inputs[t] + discount[t] * lambda_ * last
        out[t] = last
    return out


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Switch off parameter gradients inside the block: gradients still flow *through* the modules
    (to the actor's actions) but nothing is accumulated in, or computed for, their weights."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# --- behavior -----------------------------------------------------------------------------------------

class Behavior(nn.Module):
    """Actor, critic and slow critic with their own Adam optimizers.

    `train_step(wm, start, step)` imagines from the (detached) posterior states `start` of a batch and makes
    one actor and one critic update. The world model is only read, never updated, here.
    """

    def __init__(self, config, feat_size: int, act_dim: int, device=None):
        super().__init__()
        c = config
        if c["imag_gradient"] not in IMAG_GRADIENTS:
            raise ValueError(f"imag_gradient must be one of {IMAG_GRADIENTS}, got '{c['imag_gradient']}'")
        self.config = dict(c)
        self.horizon = int(c["imag_horizon"])
        assert self.horizon >= 1, f"imag_horizon must be >= 1, got {self.horizon}"
        self.actor = Actor(feat_size, act_dim, c["mlp_units"], c["mlp_layers"], c["act"], c["norm"],
                           c["actor_dist"], c["actor_init_std"], c["actor_min_std"])
        self.critic = Critic(feat_size, c["mlp_units"], c["mlp_layers"], c["act"], c["norm"])
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        self.entropy_scale = configs.schedule(c["actor_entropy"])
        self.gradient_mix = configs.schedule(c["imag_gradient_mix"])
        # Counts critic updates for the slow-critic schedule; a buffer so it is checkpointed, mirrored by a
        # host count (`n_updates`) so the schedule never reads the device.
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.n_updates = 0
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "n_updates", int(module.updates)))
        if device is not None:
            self.to(device)
        # Built on the parameters' final device: whether Adam is fused is decided there (models.optim).
        self.actor_opt = adam(self.actor.parameters(), c["actor_lr"], c["ac_eps"], c["weight_decay"])
        self.critic_opt = adam(self.critic.parameters(), c["critic_lr"], c["ac_eps"], c["weight_decay"])

    # --- acting ---------------------------------------------------------------------------------

    def act(self, feat: torch.Tensor, training: bool) -> torch.Tensor:
        """Action (..., A) in [-1, 1]: a sample while training (exploration), the mode for evaluation."""
        dist = self.actor(feat)
        return dist.sample() if training else dist.mode()

    # --- learning -------------------------------------------------------------------------------

    def imagine(self, wm, start: dict):
        """Imagined features (Hz+1, M, F), actions (Hz, M, A) and the actor's distribution (Hz, M, A) in
        states 0..Hz-1, from every start state (B, T, ...).

        The distribution is the one the actions were drawn from (the world model feeds the actor detached
        features), so the entropy and REINFORCE terms reuse it instead of running the actor again.
        """
        dists = []

        def policy(feat):
            dist = self.actor(feat)
            dists.append(dist)
            return dist.sample()

        feats, _, actions = wm.imagine(policy, start, self.horizon)
        dist = type(dists[0])(torch.stack([d.mean for d in dists]), torch.stack([d.std for d in dists]))
        return feats, actions, dist

    def targets(self, wm, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """lambda-returns (Hz, M), discount weights (Hz, M), imagined rewards (Hz, M) and slow-critic
        values (Hz+1, M)."""
        c = self.config
        reward = wm.predict_reward(feats[1:])  # (Hz, M)
        cont = wm.predict_discount(feats[1:])
        discount = c["discount"] * (cont if cont is not None else torch.ones_like(reward))  # (Hz, M)
        value = self.slow_critic(feats)  # (Hz+1, M)
        target = lambda_return(reward, value, discount, c["discount_lambda"])
        # Weight of state t = probability of still being in the episode there, times gamma^t.
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]]), 0).detach()
        return target, weight, reward, value

    def train_step(self, wm, start: dict, step: int, actor_extra=None, critic_extra=None, ok=None) -> dict:
        """One actor and one critic update from posterior states `start` (B, T, ...). Returns metrics (0-d
        device tensors; `actor_entropy_scale` a number).

        `actor_extra(actor)` / `critic_extra(critic)` -> (loss, metrics), when given, add a term to that
        loss (a distillation method's hooks). `ok` (0-d bool tensor): where false, no step is taken (the
        world-model update of the same batch was skipped)."""
        c = self.config
        start = {k: v.detach() for k, v in start.items()}
        mode = c["imag_gradient"]
        with frozen(wm):
            feats, actions, dist = self.imagine(wm, start)  # (Hz+1, M, F), (Hz, M, A), (Hz, M, A)
            target, weight, reward, slow_value = self.targets(wm, feats)
            entropy = dist.entropy()  # (Hz, M)
            if mode == "dynamics":
                objective = target
            else:
                advantage = (target - slow_value[:-1]).detach()
                reinforce = dist.log_prob(actions.detach()) * advantage
                if mode == "reinforce":
                    objective = reinforce
                else:
                    mix = self.gradient_mix(step)
                    objective = mix * reinforce + (1.0 - mix) * target
            ent_scale = self.entropy_scale(step)
            actor_loss = -(weight * (objective + ent_scale * entropy)).mean()
        extra_metrics = {}
        if actor_extra is not None:
            extra, extra_metrics = actor_extra(self.actor)
            actor_loss = actor_loss + extra
        actor_norm = self.optimizer_step(self.actor_opt, self.actor, actor_loss, c["actor_grad_clip"], ok)

        value = self.critic(feats[:-1].detach())  # (Hz, M)
        critic_loss = (weight * 0.5 * (value - target.detach()) ** 2).mean()
        if critic_extra is not None:
            extra, more = critic_extra(self.critic)
            critic_loss, extra_metrics = critic_loss + extra, {**extra_metrics, **more}
        critic_norm = self.optimizer_step(self.critic_opt, self.critic, critic_loss, c["critic_grad_clip"], ok)
        self._update_slow_critic(ok)

        values = {
            "actor_loss": actor_loss, "critic_loss": critic_loss, "actor_entropy": entropy.mean(),
            "actor_std": dist.std.mean(), "imag_return": target[0].mean(), "imag_reward": reward.mean(),
            "imag_value": value.mean(), "imag_action_abs": actions.abs().mean(),
            "actor_grad_norm": actor_norm, "critic_grad_norm": critic_norm,
        }
        metrics = {name: v.detach().float() for name, v in values.items()}
        metrics["actor_entropy_scale"] = ent_scale
        metrics.update(extra_metrics)
        return metrics

    @staticmethod
    def optimizer_step(opt: torch.optim.Optimizer, module: nn.Module, loss: torch.Tensor, clip: float,
                       ok: torch.Tensor | None = None) -> torch.Tensor:
        """Backward, clip, step. A non-finite loss or gradient (or `ok` false) skips the step on the device
        (the returned norm is then non-finite and shows up in the logged metrics) instead of writing NaNs
        into the weights."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(module.parameters(), clip)
        finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
        step_if(opt, finite if ok is None else finite & ok)
        opt.zero_grad(set_to_none=True)
        return norm

    @torch.no_grad()
    def _update_slow_critic(self, ok: torch.Tensor | None = None) -> None:
        """Every `slow_critic_update` critic updates, move the slow critic a fraction towards the critic
        (fraction 1: copy). The first call syncs them, so they start equal. A skipped update (`ok` false)
        counts but moves nothing."""
        c = self.config
        if self.n_updates % int(c["slow_critic_update"]) == 0:
            mix = float(c["slow_critic_fraction"])
            for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
                moved = torch.add(slow * (1.0 - mix), fast, alpha=mix)  # as mul_ then add_: same rounding
                slow.copy_(moved if ok is None else torch.where(ok, moved, slow))
        self.n_updates += 1
        self.updates.fill_(self.n_updates)

    # --- checkpoint -----------------------------------------------------------------------------

    def optimizer_state(self) -> dict:
        return {"actor": self.actor_opt.state_dict(), "critic": self.critic_opt.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.actor_opt.load_state_dict(state["actor"])
        self.critic_opt.load_state_dict(state["critic"])
