"""`distill_target: posterior | prior | open_loop`: the predictions each side matches (checked against the RSSM's
own filtering and imagination), their shapes and masks, gradient flow (into the student and the projection,
never into the teacher), pruning, the transition targets in pruned and shuffled runs, and their errors.

Shape legend: docs/architecture.md (V views, B batch, T time, M = B * (T - k) start states, k horizon).
"""
from __future__ import annotations

import pytest
import torch

from methods import MethodError, build_method
from methods.targets import starts, student_predictions, teacher_predictions, windows
from models.networks import TaskBlocks

from tests.test_distill import A, B, T, make_batch, make_config, make_pair, make_teacher


def _means_post(wm, data):
    """The student's posterior means (B, T, ...) and priors from its own filtering loop."""
    with torch.no_grad():
        return wm.dynamics.observe(wm.embed(data), data["action"], data["is_first"], sample=False)


@pytest.mark.parametrize("k", [1, 3])
def test_student_predictions_are_the_rssm_s_own_priors_and_imagination(k):
    _, _, wm, _ = make_pair(2)
    data = wm.preprocess(make_batch(0))
    post, prior = _means_post(wm, data)
    feats, valid = student_predictions(wm.dynamics, post, data, k)
    m = B * (T - k)
    assert feats.shape == (m, k, wm.feat_size) and valid.shape == (m, k) and valid.all()
    pred = feats.reshape(B, T - k, k, -1)
    if k == 1:  # the one-step prediction from post_{t-1} with a_t is the filter's prior at t
        assert torch.allclose(pred[:, :, 0], wm.dynamics.get_feat(prior)[:, 1:], atol=1e-5)
    start = {key: x[:, 2] for key, x in post.items()}  # start t = 2
    imagined = wm.dynamics.imagine(data["action"][:, 3:3 + k], start, sample=False)
    assert torch.allclose(pred[:, 2], wm.dynamics.get_feat(imagined), atol=1e-5)


def test_teacher_predictions_are_each_view_s_own_prior():
    _, teacher = make_teacher(3)
    data = teacher.preprocess(make_batch(1))
    tasks = [2, 0]
    _, states = teacher.task_features(data, tasks, return_states=True)  # (V, B, T, ...)
    pred = teacher_predictions(teacher, states, data, tasks, 1)
    assert pred.shape == (2, B * (T - 1), 1, teacher.feat_size)
    for v, task in enumerate(tasks):
        _, prior = teacher.observe(data, task=task, sample=False)
        own = teacher.dynamics.get_feat(prior)[:, 1:].reshape(B * (T - 1), -1)
        assert torch.allclose(pred[v, :, 0], own, atol=1e-5), task


def test_predictions_that_cross_an_episode_start_are_masked():
    batch = make_batch(0)
    batch["is_first"][0, 4] = True  # sequence 0 holds a second episode from t = 4
    data = {k: torch.as_tensor(v) for k, v in batch.items()}
    actions, valid = windows(data, 2)
    assert actions.shape == (B * (T - 2), 2, A)
    grid = valid.reshape(B, T - 2, 2)
    # From start t, step j predicts t + j + 1 (j = 0, 1): invalid when t < 4 <= t + j + 1.
    expected = torch.tensor([[not (t < 4 <= t + j + 1) for j in range(2)] for t in range(T - 2)])
    assert torch.equal(grid[0], expected) and grid[1:].all()
    assert torch.equal(actions.reshape(B, T - 2, 2, A)[:, 3, 1], data["action"][:, 5])
    flat = starts({"deter": torch.arange(B * T).reshape(B, T, 1)}, 2, 1)["deter"]
    assert flat.shape == (B * (T - 2), 1) and int(flat[T - 2]) == T  # sequence 1 starts after T - 2 rows


@pytest.mark.parametrize("target", ["posterior", "prior", "open_loop"])
def test_gradients_reach_the_student_and_the_projection_never_the_teacher(target):
    _, teacher, wm, d = make_pair(3, "--distill_target", target, "--distill_horizon", "3")
    data = wm.preprocess(make_batch(2))
    _, _, post = wm.loss(data)
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    loss.backward()
    assert torch.isfinite(loss) and metrics["distill/loss"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    has = lambda module: any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert has(wm.encoders) and has(d.proj) and has(d.relevance)
    # Only transition targets train the student's prior head (the prior of the next step); a posterior never reads it.
    assert has(wm.dynamics.prior_head) == (target != "posterior")


def test_open_loop_matches_every_step_up_to_the_horizon_and_costs_follow_the_active_views():
    _, teacher, wm, d = make_pair(4, "--distill_target", "open_loop", "--distill_horizon", "4")
    d.set_active([1, 3])
    data = wm.preprocess(make_batch(3))
    calls = []
    original = teacher.dynamics.img_step

    def counting(state, action, task=None, sample=True):
        calls.append((len(task), tuple(task.tasks)) if isinstance(task, TaskBlocks) else None)
        return original(state, action, task, sample)

    teacher.dynamics.img_step = counting
    _, _, post = wm.loss(data)
    d.world_model_loss(data, post, wm, 0)
    rollout = [c for c in calls if c is not None and c[0] == 2 * B * (T - 4)]
    assert len(rollout) == 4 and all(c[1] == (1, 3) for c in rollout)  # 4 steps, the 2 active views only


@pytest.mark.parametrize("mode,flags,message", [
    ("reward", ["--distill_target", "prior"], "matches only posterior"),
    ("comet", ["--distill_target", "open_loop", "--distill_horizon", str(T)], "distill_horizon must lie in"),
    ("comet", ["--distill_target", "transitions"], "distill_target must be one of"),
])
def test_unsupported_targets_are_clear_errors(mode, flags, message):
    _, teacher = make_teacher(2)
    config = make_config("--distill_mode", mode, *flags)
    with pytest.raises(MethodError, match=message):
        build_method(config, teacher, 24, verbose=False)


def test_target_is_part_of_the_distiller_state_so_a_resume_with_another_one_is_refused():
    _, _, _, prior = make_pair(2, "--distill_target", "prior")
    _, _, _, posterior = make_pair(2)
    assert "distill_target" not in posterior.get_extra_state()  # older checkpoints resume unchanged
    with pytest.raises(MethodError, match="distill_target"):
        posterior.load_state_dict(prior.state_dict())


@pytest.mark.parametrize("target", ["prior", "open_loop"])
def test_transition_targets_run_with_a_bf16_student(monkeypatch, target):
    """A precision-16 student on a device with native bf16 (assumed here, so CPU autocast is live): its posterior
    holds bf16 and float32 parts; the k-step rollout from it runs in the student's own autocast, not in a
    float32 layer fed bf16 (which raised 'mat1 and mat2 must have the same dtype' at the first update)."""
    import tools

    monkeypatch.setattr(tools, "native_bf16", lambda device: True)
    _, teacher, wm, d = make_pair(2, "--distill_target", target, "--distill_horizon", "2", "--precision", "16")
    data = wm.preprocess(make_batch(3))
    _, _, post = wm.loss(data)
    assert {x.dtype for x in post.values()} != {torch.float32}, "autocast must be live for this check"
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and metrics["distill/loss"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.dynamics.prior_head.parameters())
