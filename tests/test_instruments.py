"""The instruments of a distilling run: the gradient share r of the distillation term over the student's encoder +
RSSM, the relevance statistics, the state probe, and what a tiny distilling run writes to metrics.jsonl.

Shape legend: docs/architecture.md (V views, B batch, T time, F feature size).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import configs
import replay
from methods import build_method
from models import grad_share
from models.agent import Agent
from models.world_model import TeacherWorldModel
from training.probe import cross_fitted_r2, probe, ridge_r2

from tests.test_distill import TASKS, make_batch

A = 4


def make_agent(*extra: str, k: int = 3, seed: int = 0):
    """A state student Agent (debug sizes) with a comet distiller from a random K-task teacher."""
    config = configs.load_config(["--configs", "defaults", "metaworld_state", "debug", "--obs", "state",
                                  "--source_tasks", ",".join(TASKS[:k]), *extra])
    torch.manual_seed(seed)
    teacher = TeacherWorldModel(config, A).eval()
    agent = Agent(config, None, A, "cpu")
    agent.attach_distiller(build_method(config, teacher, agent.wm.feat_size, verbose=False))
    return config, agent


# --- gradient share -----------------------------------------------------------------------------------

def test_gradient_share_equals_the_norms_of_each_part_taken_alone():
    _, agent = make_agent("--grad_share_every", "1", "--distill_weight", "3.0")
    wm, d = agent.wm, agent.distiller
    batch = make_batch(1)
    params = wm.representation_parameters()
    torch.manual_seed(5)  # the posterior samples: the same in the reference and in the measured update
    data = wm.preprocess(batch)
    wm_loss, _, post = wm.loss(data)
    distill_loss, _ = d.world_model_loss(data, post, wm, 0)
    norm = lambda grads: torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
    g_wm = torch.autograd.grad(wm_loss, params, retain_graph=True, allow_unused=True)
    g_d = torch.autograd.grad(distill_loss, params, allow_unused=True)
    torch.manual_seed(5)
    metrics = agent.train_world_model(batch, 0)[2]
    assert float(metrics[grad_share.PART_NORM]) == pytest.approx(float(norm(g_d)), rel=1e-4)
    assert float(metrics[grad_share.REST_NORM]) == pytest.approx(float(norm(g_wm)), rel=1e-4)
    assert float(metrics[grad_share.SHARE]) == pytest.approx(float(norm(g_d) / norm(g_wm)), rel=1e-4)
    assert 0 < float(metrics[grad_share.SHARE]) < 1e3


def test_gradient_share_is_measured_only_every_n_updates_and_not_without_a_world_model_term():
    _, agent = make_agent("--grad_share_every", "3")
    measured = [grad_share.SHARE in agent.train_world_model(make_batch(i), i)[2] for i in range(7)]
    assert measured == [True, False, False, True, False, False, True]
    _, off = make_agent("--grad_share_every", "0")
    assert grad_share.SHARE not in off.train_world_model(make_batch(0), 0)[2]
    plain = Agent(configs.load_config(["--configs", "defaults", "metaworld_state", "debug"]), None, A, "cpu")
    assert grad_share.SHARE not in plain.train_world_model(make_batch(0), 0)[2]


def test_a_resumed_agent_measures_the_share_on_the_same_updates_as_an_uninterrupted_one():
    _, agent = make_agent("--grad_share_every", "3")
    first = [grad_share.SHARE in agent.train_world_model(make_batch(i), i)[2] for i in range(4)]
    _, resumed = make_agent("--grad_share_every", "3")
    resumed.load_state_dict(agent.state_dict())
    later = [grad_share.SHARE in resumed.train_world_model(make_batch(i), i)[2] for i in range(4, 7)]
    assert first + later == [True, False, False, True, False, False, True]


def test_gradient_share_grows_linearly_with_the_weight_on_the_same_batch():
    shares = {}
    for weight in (1.0, 10.0):
        _, agent = make_agent("--grad_share_every", "1", "--distill_weight", str(weight))
        torch.manual_seed(3)
        metrics = agent.train_world_model(make_batch(2), 0)[2]
        shares[weight] = (float(metrics[grad_share.SHARE]), float(metrics[grad_share.REST_NORM]))
    assert shares[10.0][0] == pytest.approx(10 * shares[1.0][0], rel=1e-3)
    assert shares[10.0][1] == pytest.approx(shares[1.0][1], rel=1e-4)  # the world model's part is unchanged


# --- relevance statistics -----------------------------------------------------------------------------

def test_relevance_entropy_and_argmax_share_on_known_weights():
    _, agent = make_agent(k=3)
    d = agent.distiller
    uniform = torch.full((3, 4, 5), 1 / 3)
    names, values = d.relevance_stats(uniform)
    assert names[0] == "distill/relevance_entropy" and float(values[0]) == pytest.approx(1.0, abs=1e-5)
    collapsed = torch.zeros(3, 4, 5)
    collapsed[1] = 1.0
    names, values = d.relevance_stats(collapsed)
    assert float(values[0]) == pytest.approx(0.0, abs=1e-5)
    assert names[1:] == [f"distill/relevance_argmax_{t}" for t in TASKS[:3]]
    assert [float(v) for v in values[1:]] == [0.0, 1.0, 0.0]
    # Half the positions pick view 0, half view 2; a mask leaves out the positions of the first sequence.
    split = torch.zeros(3, 2, 2)
    split[0, 0], split[2, 1] = 1.0, 1.0
    mask = torch.tensor([[False, False], [True, True]])
    assert [float(v) for v in d.relevance_stats(split)[1][1:]] == [0.5, 0.0, 0.5]
    assert [float(v) for v in d.relevance_stats(split, mask)[1][1:]] == [0.0, 0.0, 1.0]


def test_comet_update_logs_the_relevance_statistics():
    _, agent = make_agent(k=3)
    metrics = agent.train_world_model(make_batch(0), 0)[2]
    assert 0.0 <= metrics["distill/relevance_entropy"] <= 1.0
    shares = [metrics[f"distill/relevance_argmax_{t}"] for t in TASKS[:3]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)


# --- state probe ----------------------------------------------------------------------------------------

def test_ridge_probe_recovers_a_linear_state_and_not_an_unrelated_one():
    rng = np.random.default_rng(0)
    state = torch.as_tensor(rng.normal(size=(400, 6)), dtype=torch.float32)
    mix = torch.as_tensor(rng.normal(size=(6, 20)), dtype=torch.float32)
    feats = state @ mix + 0.01 * torch.randn(400, 20)
    assert ridge_r2(feats[:200], state[:200], feats[200:], state[200:]) > 0.99
    noise = torch.randn(400, 20)
    assert ridge_r2(noise[:200], state[:200], noise[200:], state[200:]) < 0.05
    episodes = [feats[i::8] for i in range(8)], [state[i::8] for i in range(8)]
    assert cross_fitted_r2(*episodes) > 0.99


def test_probe_reads_student_and_teacher_latents_of_whole_episodes():
    config, agent = make_agent(k=2)
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(4):  # two lengths: batched per length
        length = 9 if i % 2 else 7
        ep = {"state": rng.normal(size=(length, 39)).astype(np.float32),
              "action": rng.uniform(-1, 1, (length, A)).astype(np.float32),
              "is_first": np.eye(1, length, dtype=bool)[0]}
        episodes.append(ep)
    d = agent.distiller
    out = probe(agent.wm, episodes, d.teacher, d.active_ids)
    assert set(out) == {"probe/student_r2", "probe/teacher_r2", *(f"probe/teacher_r2_{t}" for t in TASKS[:2])}
    assert all(np.isfinite(v) for v in out.values())
    assert out["probe/teacher_r2"] == pytest.approx(np.mean([out[f"probe/teacher_r2_{t}"] for t in TASKS[:2]]))
    assert probe(agent.wm, episodes[:1]) == {}  # one episode cannot be cross-fitted
    assert set(probe(agent.wm, episodes)) == {"probe/student_r2"}


# --- what a run writes ----------------------------------------------------------------------------------

TINY = ["--progress", "False", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """Two-task state source data and a teacher pretrained for a few updates on it (quickstart sizes)."""
    import collect_data
    import dreamer_pretrain

    root = tmp_path_factory.mktemp("instruments")
    blocks = ["--configs", "defaults", "metaworld", "quickstart", "debug", *TINY]
    tasks = "metaworld_reach,metaworld_push"
    assert collect_data.main(["--tasks", tasks, "--episodes", "2", "--obs", "state", "--workers", "1",
                              "--out", str(root / "data"), "--seed", "0", *blocks]) == 0
    dirs = f"{root / 'data' / 'reach'},{root / 'data' / 'push'}"
    assert dreamer_pretrain.main([*blocks, "--source_tasks", tasks, "--source_task_dirs", dirs,
                                  "--logdir", str(root / "teacher")]) == 0
    return root, tasks


def _rows(logdir) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout_hint(60)
def test_a_distilling_quickstart_student_logs_the_share_the_relevance_and_the_probe(tiny_teacher):
    import dreamer_distill

    root, tasks = tiny_teacher
    logdir = root / "student"
    code = dreamer_distill.main(["--configs", "defaults", "metaworld", "quickstart", "debug", *TINY,
                                 "--use_distill", "True", "--teacher_model_path", str(root / "teacher" / "teacher.pt"),
                                 "--source_tasks", tasks, "--logdir", str(logdir), "--eval_episodes", "2",
                                 "--grad_share_every", "2"])
    assert code == 0
    rows = _rows(logdir)
    train = [r for r in rows if "train/model_loss" in r]
    assert train and all(r["train/distill/grad_share"] > 0 for r in train)
    assert all(0 <= r["train/distill/relevance_entropy"] <= 1 for r in train)
    assert all({"train/distill/relevance_argmax_metaworld_reach", "train/distill/grad_norm_wm"} <= set(r)
               for r in train)
    probes = [r for r in rows if "probe/student_r2" in r]
    assert [r["step"] for r in probes] == [80, 160]  # probe_every 80 of the debug block, at the evaluations
    assert all(np.isfinite(r["probe/teacher_r2"]) and "probe/teacher_r2_metaworld_push" in r for r in probes)


@pytest.mark.slow
@pytest.mark.timeout_hint(60)
def test_a_pixel_student_keeps_the_state_in_its_evaluation_episodes_for_the_probe(tmp_path):
    import dreamer_distill

    logdir = tmp_path / "pixel"
    code = dreamer_distill.main(["--configs", "defaults", "metaworld", "debug", "--obs", "pixel", "--task",
                                 "metaworld_reach", *TINY, "--logdir", str(logdir), "--eval_episodes", "2",
                                 "--steps", "80"])
    assert code == 0
    evals = replay.load_dir(logdir / "eval_eps")
    # --steps 80 halves the debug block's intervals: evaluations (and probes) at 40 and 80, 2 episodes each
    assert len(evals) == 4 and all(ep["state"].shape == (21, 39) and "image" in ep for ep in evals.values())
    assert all("state" not in ep for ep in replay.load_dir(logdir / "train_eps").values())
    probes = [r for r in _rows(logdir) if "probe/student_r2" in r]
    assert [r["step"] for r in probes] == [40, 80]
    assert all(np.isfinite(r["probe/student_r2"]) and "probe/teacher_r2" not in r for r in probes)
