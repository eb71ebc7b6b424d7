"""`--cuda_graphs True`: whole updates captured in CUDA graphs and replayed (models/graphs.py).

On the CPU: what cannot be captured is refused with one line before anything runs, and the host counters a
replay skips are advanced as the update's Python would have. With `--device cuda` (skipped elsewhere, with the
reason): a captured plain and distilling student and a captured teacher make the same updates as eager ones
(metrics of every update and the weights after them), replaying from the fifth update on.

Shape legend: B batch, T time, K source tasks, A action size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tools
from models.agent import Agent
from models.graphs import CapturedUpdate, HostCounters, capture_student, constant_schedule
from tests.test_compile import student, teacher
from tests.test_distill import make_config
from tests.test_pretrain import args as pretrain_args, collect_sources, records

UPDATES = 7  # 3 eager warm-up updates, the capture (which replays once), 3 replays


# --- on the CPU ------------------------------------------------------------------------------------------

def test_constant_schedules_are_told_apart():
    assert constant_schedule("1e-4") and constant_schedule("1.0")
    assert not constant_schedule("linear(1,0,2e4)")


@pytest.mark.parametrize("flags,words", [
    ([], "--device cuda"),
    (["--actor_entropy", "linear(1e-3,1e-4,1e4)"], "--actor_entropy"),
    (["--imag_gradient", "both", "--imag_gradient_mix", "linear(0.1,0,2.5e4)"], "--imag_gradient_mix"),
])
def test_what_cannot_be_captured_is_refused_in_one_line(flags, words):
    agent = Agent(make_config(*flags), None, 4, "cpu")
    with pytest.raises(tools.UsageError) as err:
        capture_student(agent)
    message = str(err.value)
    assert "\n" not in message and message.startswith("--cuda_graphs True: ") and words in message, message


def test_distill_modes_not_checked_for_capture_are_refused():
    agent = student(distill=True)
    agent.config["distill_mode"] = "reward"
    with pytest.raises(tools.UsageError, match="--distill_mode reward is not captured"):
        capture_student(agent)


def test_a_replay_advances_the_host_counters_as_the_python_did():
    class Counted:
        updates, n_updates = 0, 10

    obj = Counted()
    mirror = torch.zeros((), dtype=torch.long)
    host = HostCounters([(obj, "updates"), (obj, "n_updates")], [(mirror, obj, "n_updates")])
    host.start()
    obj.updates, obj.n_updates = 1, 11  # an update that ran Python (eager or the capture)
    host.finish("k", replayed=False)
    for _ in range(3):
        host.start()
        host.finish("k", replayed=True)
    assert (obj.updates, obj.n_updates, int(mirror)) == (4, 14, 14)


# --- on CUDA -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return collect_sources(tmp_path_factory.mktemp("data"))


def updates_of(agent, batch, updates: int = UPDATES) -> list[dict]:
    torch.manual_seed(1)
    torch.cuda.manual_seed(1)
    out = [agent.train(batch, step) for step in range(updates)]
    return [{k: float(v) for k, v in m.items()} for m in out]


def assert_same(captured: list[dict], eager: list[dict], what: str) -> None:
    for i, (c, e) in enumerate(zip(captured, eager)):
        assert c.keys() == e.keys(), (what, i, sorted(set(c) ^ set(e)))
        for name in e:
            assert np.isclose(c[name], e[name], rtol=1e-4, atol=1e-6, equal_nan=True), (what, i, name, c[name], e[name])


@pytest.mark.device
@pytest.mark.parametrize("distill", [False, True], ids=["plain", "distilling"])
def test_captured_student_updates_equal_eager(cuda_device, distill):
    from bench.common import random_student_batch

    runs = {}
    for captured in (False, True):
        agent = student_on(cuda_device, distill)
        graphs = capture_student(agent) if captured else None
        batch = random_student_batch(agent.config, agent.wm.obs_shapes)
        runs[captured] = (updates_of(agent, batch), {n: p.detach().cpu() for n, p in agent.wm.named_parameters()})
        if graphs is not None:
            assert graphs.captured.replays >= UPDATES - 4, graphs.captured.replays
            assert agent.updates == UPDATES and agent.behavior.n_updates == UPDATES
            assert int(agent.behavior.updates) == UPDATES
    assert_same(runs[True][0], runs[False][0], "metric")
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_forgotten_keys_give_their_graph_slots_back():
    """After a prune the keys of the earlier active views never come again; forgetting them lets the new views'
    keys be captured (with `max_graphs` full they would run eagerly for the rest of the run)."""
    captured = CapturedUpdate(lambda inputs: inputs, warmup=1, max_graphs=2)
    captured.graphs = {(True, False, (0, 1, 2)): "graph a", (False, False, (0, 1, 2)): "graph b"}
    captured.eager_calls.update({(True, True, (0, 1, 2)): 1, (False, False, (0, 2)): 1})
    captured.forget(lambda key: key[2] == (0, 2))
    assert captured.graphs == {} and dict(captured.eager_calls) == {(False, False, (0, 2)): 1}


@pytest.mark.device
def test_a_pruned_student_keeps_only_graphs_of_its_current_views(cuda_device):
    from bench.common import random_student_batch
    from methods import build_method

    config = make_config("--device", str(cuda_device))
    torch.manual_seed(0)
    agent = Agent(config, None, 4, cuda_device)
    frozen = teacher(seed=1).to(cuda_device).eval()
    agent.attach_distiller(build_method({**config, "prune_every": 4, "min_active_tasks": 1}, frozen,
                                        agent.wm.feat_size, verbose=False))
    graphs = capture_student(agent)
    updates_of(agent, random_student_batch(agent.config, agent.wm.obs_shapes), updates=20)
    views = tuple(agent.distiller.active_ids)
    assert len(views) < frozen.n_tasks, "no prune happened: the check needs one"
    assert graphs.captured.graphs and {key[2] for key in graphs.captured.graphs} == {views}, graphs.captured.graphs


def student_on(device, distill: bool) -> Agent:
    """`tests.test_compile.student` built on `device` (its optimizers there from the start)."""
    from methods import build_method

    config = make_config("--device", str(device))
    torch.manual_seed(0)
    agent = Agent(config, None, 4, device)
    if distill:
        frozen = teacher(seed=1).to(device).eval()
        agent.attach_distiller(build_method({**config, "prune_every": 0}, frozen, agent.wm.feat_size, verbose=False))
    return agent


@pytest.mark.device
def test_captured_teacher_pretraining_equals_eager(cuda_device, sources, tmp_path):
    """The pretraining stage itself (dreamer_pretrain.py, 8 updates) with and without --cuda_graphs: the same
    logged losses and the same teacher weights."""
    import dreamer_pretrain
    from models import load_teacher

    runs = {}
    for flag in ("False", "True"):
        logdir = tmp_path / f"graphs_{flag}"
        assert dreamer_pretrain.main(pretrain_args(logdir, sources, "--device", str(cuda_device),
                                                   "--pretrain_iterations", "8", "--cuda_graphs", flag)) == 0
        rows, _ = records(logdir)
        teacher_model, _ = load_teacher(logdir / "teacher.pt", "cpu")
        runs[flag] = ([r["train/model_loss"] for r in rows if "train/model_loss" in r], teacher_model.state_dict())
    assert len(runs["True"][0]) >= 4 and np.allclose(runs["True"][0], runs["False"][0], rtol=1e-4), runs
    for name, value in runs["False"][1].items():
        torch.testing.assert_close(runs["True"][1][name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("extra,words", [(["--device", "cpu"], "--device cuda"),
                                         (["--grad_surgery", "pcgrad"], "--grad_surgery pcgrad")])
def test_pretraining_refuses_what_it_cannot_capture_before_reading_data(tmp_path, capsys, extra, words):
    import dreamer_pretrain

    dirs = [tmp_path / "no_data_a", tmp_path / "no_data_b"]  # never read: the flags are refused first
    assert dreamer_pretrain.main(pretrain_args(tmp_path / "run", dirs, "--cuda_graphs", "True", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cuda_graphs True" in err[0] and words in err[0], err
