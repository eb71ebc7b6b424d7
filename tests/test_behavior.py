"""Behavior learning: lambda-returns, action bounds, imagination shapes and what each update touches."""
import math

import numpy as np
import pytest
import torch

import configs
from models.behavior import Actor, Behavior, TanhNormal, TruncNormal, lambda_return
from models.world_model import WorldModel


def tiny_config(**overrides):
    config = configs.load_config(["--configs", "defaults", "metaworld_state", "debug"])
    config.update(overrides)
    return config


def random_batch(config, batch=3, length=6, seed=0):
    rng = np.random.default_rng(seed)
    data = {"state": rng.normal(size=(batch, length, 39)).astype(np.float32),
            "action": rng.uniform(-1, 1, (batch, length, 4)).astype(np.float32),
            "reward": rng.uniform(0, 1, (batch, length)).astype(np.float32),
            "discount": np.ones((batch, length), np.float32),
            "is_first": np.zeros((batch, length), bool), "is_terminal": np.zeros((batch, length), bool)}
    data["is_first"][:, 0] = True
    data["action"][:, 0] = 0
    return data


# --- lambda-returns -----------------------------------------------------------------------------

def reference_lambda_return(reward, value, discount, lam):
    """Weighted n-step returns, written out term by term: R_t = (1-lam) sum_n lam^(n-1) G_t^(n) + lam^(N-1) G_t^(N)."""
    horizon, m = reward.shape
    out = np.zeros((horizon, m))
    for j in range(m):
        for t in range(horizon):
            steps = horizon - t

            def n_step(n):
                total, scale = 0.0, 1.0
                for i in range(n):
                    total += scale * reward[t + i, j]
                    scale *= discount[t + i, j]
                return total + scale * value[t + n, j]

            total = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, steps))
            out[t, j] = total + lam ** (steps - 1) * n_step(steps)
    return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_return_matches_hand_computed_n_step_mixture(lam):
    rng = np.random.default_rng(1)
    horizon, m = 7, 5
    reward = rng.normal(size=(horizon, m))
    value = rng.normal(size=(horizon + 1, m))
    discount = 0.99 * (rng.uniform(size=(horizon, m)) > 0.1)  # some terminal states
    got = lambda_return(*(torch.tensor(x, dtype=torch.float64) for x in (reward, value, discount)), lam)
    np.testing.assert_allclose(got.numpy(), reference_lambda_return(reward, value, discount, lam), rtol=1e-10)


def test_lambda_return_limits():
    reward = torch.ones(4, 1)
    value = torch.full((5, 1), 10.0)
    discount = torch.full((4, 1), 0.5)
    # lambda = 0: one-step TD targets r + gamma V(s').
    assert torch.allclose(lambda_return(reward, value, discount, 0.0), torch.full((4, 1), 6.0))
    # lambda = 1: discounted Monte Carlo return bootstrapped at the end.
    expected = torch.tensor([[1 + 0.5 + 0.25 + 0.125 + 0.0625 * 10]])
    assert torch.allclose(lambda_return(reward, value, discount, 1.0)[:1], expected)


# --- action distributions -------------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["tanh_normal", "trunc_normal"])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
def test_actor_actions_stay_in_bounds_even_for_huge_inputs(dist, scale):
    torch.manual_seed(0)
    actor = Actor(10, 4, 16, 2, dist=dist)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(50.0)  # saturate the output layer: pre-activations in the thousands
    feat = scale * torch.randn(512, 10)
    out = actor(feat)
    for action in (out.sample(), out.mode()):
        assert torch.isfinite(action).all()
        assert action.abs().max() <= 1.0, (dist, scale, float(action.abs().max()))
    assert torch.isfinite(out.log_prob(out.sample())).all()
    assert torch.isfinite(out.entropy()).all()


def test_trunc_normal_log_prob_and_entropy_are_consistent():
    torch.manual_seed(0)
    mean = torch.tensor([[0.9, -0.3]]).expand(200_000, 2)
    std = torch.tensor([[0.5, 2.0]]).expand(200_000, 2)
    dist = TruncNormal(mean, std)
    x = dist.sample()
    assert x.abs().max() <= 1.0
    # Monte Carlo entropy -E[log p] matches the closed form.
    assert abs(float(-dist.log_prob(x).mean()) - float(dist.entropy()[0])) < 0.02
    # The density integrates to one over [-1, 1] (per dimension, trapezoid rule).
    grid = torch.linspace(-1, 1, 20001)
    one = TruncNormal(torch.tensor([0.9]), torch.tensor([0.5]))
    density = torch.exp(one.log_prob(grid.unsqueeze(-1)))
    assert abs(float(torch.trapezoid(density, grid)) - 1.0) < 1e-3


def test_tanh_normal_sample_gradients_reach_mean_and_std():
    mean = torch.zeros(64, 4, requires_grad=True)
    std = torch.ones(64, 4, requires_grad=True)
    dist = TanhNormal(mean, std)
    (dist.sample().sum() + dist.entropy().sum()).backward()
    assert mean.grad.abs().sum() > 0 and std.grad.abs().sum() > 0


# --- imagination and updates -----------------------------------------------------------------------

def test_imagination_shapes_from_every_posterior_state():
    config = tiny_config(imag_horizon=5)
    wm = WorldModel(config, 4)
    behavior = Behavior(config, wm.feat_size, 4)
    post, _ = wm.observe(random_batch(config, batch=3, length=6))
    feats, actions, dist = behavior.imagine(wm, post)
    assert feats.shape == (6, 3 * 6, wm.feat_size)  # (Hz+1, B*T, F)
    assert actions.shape == (5, 3 * 6, 4)  # (Hz, B*T, A)
    assert actions.abs().max() <= 1.0
    start = wm.dynamics.get_feat(post).reshape(-1, wm.feat_size)
    assert torch.allclose(feats[0], start)
    target, weight, reward, value = behavior.targets(wm, feats)
    assert target.shape == weight.shape == reward.shape == (5, 18) and value.shape == (6, 18)
    assert dist.mean.shape == (5, 18, 4)  # the distribution each imagined action was drawn from
    assert torch.allclose(weight[:, 0], config["discount"] ** torch.arange(5.0))


@pytest.mark.parametrize("mode", ["dynamics", "reinforce", "both"])
def test_behavior_update_changes_actor_and_critic_only(mode):
    torch.manual_seed(0)
    config = tiny_config(imag_horizon=4, imag_gradient=mode, actor_entropy="0")
    wm = WorldModel(config, 4)
    behavior = Behavior(config, wm.feat_size, 4)
    wm_before = {k: v.clone() for k, v in wm.state_dict().items()}
    actor_before = [p.clone() for p in behavior.actor.parameters()]
    critic_before = [p.clone() for p in behavior.critic.parameters()]
    post, _ = wm.observe(random_batch(config))
    metrics = behavior.train_step(wm, post, step=0)
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    assert metrics["actor_grad_norm"] > 0  # the objective reaches the actor (through the dynamics or REINFORCE)
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, behavior.actor.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, behavior.critic.parameters()))
    for k, v in wm.state_dict().items():
        assert torch.equal(v, wm_before[k]), f"behavior update changed world-model weight {k}"
    assert all(p.grad is None for p in wm.parameters()), "world-model gradients left behind"
    assert all(p.requires_grad for p in wm.parameters()), "world model left frozen"


def test_slow_critic_follows_the_critic_on_schedule():
    torch.manual_seed(0)
    config = tiny_config(imag_horizon=3, slow_critic_update=3, slow_critic_fraction=0.5)
    wm = WorldModel(config, 4)
    behavior = Behavior(config, wm.feat_size, 4)
    post, _ = wm.observe(random_batch(config))
    post = {k: v.detach() for k, v in post.items()}
    slow = lambda: torch.cat([p.flatten() for p in behavior.slow_critic.parameters()])
    fast = lambda: torch.cat([p.flatten() for p in behavior.critic.parameters()])
    behavior.train_step(wm, post, 0)  # update 0: mixes (the critic just moved)
    first = slow().clone()
    behavior.train_step(wm, post, 1)
    behavior.train_step(wm, post, 2)
    assert torch.equal(slow(), first), "slow critic moved between scheduled updates"
    before = slow().clone()
    behavior.train_step(wm, post, 3)  # update 3: slow <- 0.5 critic + 0.5 slow
    assert torch.allclose(slow(), 0.5 * fast() + 0.5 * before, atol=1e-6)
    assert all(not p.requires_grad for p in behavior.slow_critic.parameters())
