"""models/optim.py: fused Adam against PyTorch's reference Adam, and the optimizer step skipped on the device
(fused: Adam's own skip flag; elsewhere: step then undo) leaving weights, moments and step counts untouched."""
from __future__ import annotations

import pytest
import torch

import configs
from models.agent import Agent
from models.optim import adam, is_fused, step_if


def pair(seed: int = 0, decoupled: bool = False, weight_decay: float = 0.0):
    """Two copies of the same parameters: one under reference (for-loop) Adam, one under `models.optim.adam`."""
    torch.manual_seed(seed)
    params = [torch.randn(300, 7), torch.randn(41), torch.randn(5, 5, 3)]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    ours = [torch.nn.Parameter(p.clone()) for p in params]
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return (ref, cls(ref, lr=6e-4, eps=1e-5, weight_decay=weight_decay, foreach=False),
            ours, adam(ours, 6e-4, 1e-5, weight_decay, decoupled))


@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 1e-4), (True, 1e-2)])
def test_fused_adam_follows_the_reference_adam_within_float_rounding(decoupled, weight_decay):
    ref, ref_opt, ours, opt = pair(decoupled=decoupled, weight_decay=weight_decay)
    assert is_fused(opt) and not is_fused(ref_opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        for a, b in zip(ref, ours):
            a.grad = torch.randn(a.shape, generator=gen) * 3.0
            b.grad = a.grad.clone()
        ref_opt.step()
        opt.step()
    # Fused kernels round differently (e.g. an FMA where the reference multiplies then adds): after 200 steps
    # of lr 6e-4 the weights agree to a few float32 ulps of their size (they moved by ~0.1).
    for a, b in zip(ref, ours):
        moved = (a.detach() - b.detach()).abs().max()
        assert moved <= 2e-6, moved
        assert not torch.equal(a, torch.zeros_like(a))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "step_then_undo"])
def test_a_skipped_step_changes_nothing_and_a_taken_one_is_a_plain_step(fused):
    _, _, ours, opt = pair()
    if not fused:  # the path of devices without fused kernels, run on the CPU
        opt = torch.optim.Adam(ours, lr=6e-4, eps=1e-5)
    assert is_fused(opt) == fused
    reference = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    ref_opt = torch.optim.Adam(reference, lr=6e-4, eps=1e-5)
    gen = torch.Generator().manual_seed(2)
    for i in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        bad = i in (0, 3)  # the very first step skipped too: its state must stay as if never stepped
        for p, r, g in zip(ours, reference, grads):
            p.grad = torch.full_like(g, float("nan")) if bad else g.clone()
            r.grad = g.clone()
        step_if(opt, torch.tensor(not bad))
        if not bad:
            ref_opt.step()
        for p, r in zip(ours, reference):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=2e-6)
            want = ref_opt.state.get(r) or {k: torch.zeros_like(v) for k, v in opt.state[p].items()}  # none yet
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(opt.state[p][key], want[key], rtol=1e-5, atol=1e-12)
            if fused:  # the host-side step counters of non-fused Adam still advance on a skip
                assert float(opt.state[p]["step"]) == float(want["step"])
    assert all(torch.isfinite(p).all() for p in ours)


def test_the_student_and_its_behavior_use_fused_adam_on_the_cpu():
    config = configs.load_config(["--configs", "defaults", "metaworld_state", "debug"])
    agent = Agent(config, {"state": (39,)}, 4, "cpu")
    assert all(is_fused(o) for o in (agent.wm_opt, agent.behavior.actor_opt, agent.behavior.critic_opt))


def test_without_fused_kernels_the_choice_falls_back_to_plain_adam():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    opt = adam(params, 1e-3, 1e-8)
    assert not is_fused(opt)
    params[0].grad = torch.zeros(3, device="meta")
    step_if(opt, torch.tensor(True, device="meta"))  # runs (step then undo) without reading the device
    assert opt.state[params[0]]["exp_avg"].device.type == "meta"
