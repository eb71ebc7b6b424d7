"""Distillation: projection/relevance shapes, pruning, cost after pruning, gradients, learning on a fixed
teacher, strict teacher loading and compatibility errors, resume state, and each distill_mode end to end.

Everything runs on the CPU at tiny sizes (`debug` block). Shape legend: V active views, K source tasks,
B batch, T time, F feature size.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tools
import configs
import envs
from methods import MethodError, build_method, check_compatible
from models.teacher_io import teacher_payload
from models.world_model import TeacherWorldModel, WorldModel

TASKS = list(envs.TASKS[:12])  # real task names: the config loader accepts only those
B, T, A = 4, 8, 4


def make_config(*extra: str, obs: str = "state"):
    block = "metaworld_state" if obs == "state" else "metaworld"
    return configs.load_config(["--configs", "defaults", block, "debug", "--obs", obs, *extra])


def make_teacher(k: int, mode: str = "moe", obs: str = "state", seed: int = 0, **overrides):
    extra = ["--source_tasks", ",".join(TASKS[:k]), "--teacher_encoder_mode", mode]
    for key, value in overrides.items():
        extra += [f"--{key}", str(value)]
    config = make_config(*extra, obs=obs)
    torch.manual_seed(seed)
    return config, TeacherWorldModel(config, A).eval()


def make_batch(seed: int = 0, obs: str = "state") -> dict:
    rng = np.random.default_rng(seed)
    batch = {"action": rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
             "reward": rng.uniform(0, 1, (B, T)).astype(np.float32),
             "discount": np.ones((B, T), np.float32), "is_first": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    if obs in ("state", "both"):
        batch["state"] = rng.normal(size=(B, T, 39)).astype(np.float32)
    if obs in ("pixel", "both"):
        batch["image"] = rng.integers(0, 255, (B, T, 64, 64, 3), dtype=np.uint8)
    return batch


def make_pair(k: int, *extra: str, mode: str = "comet", teacher_mode: str = "moe", seed: int = 0):
    """(config, teacher, student world model, distiller) with a K-task teacher."""
    _, teacher = make_teacher(k, teacher_mode, seed=seed)
    config = make_config("--distill_mode", mode, *extra)
    torch.manual_seed(seed + 1)
    wm = WorldModel(config, A)
    return config, teacher, wm, build_method(config, teacher, wm.feat_size, verbose=False)


def run_update(distiller, wm: WorldModel, data: dict, step: int = 0):
    _, _, post = wm.loss(data)
    return distiller.world_model_loss(data, post, wm, step)


# --- shapes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subset", [[0], [1, 3], [0, 2, 3], [0, 1, 2, 3]])
def test_projection_and_relevance_shapes_for_active_subsets(subset):
    _, teacher, wm, d = make_pair(4, "--distill_hidden", "32", "--relevance_hidden", "16")
    data = wm.preprocess(make_batch())
    _, _, post = wm.loss(data)
    s = wm.dynamics.get_feat(post)  # (B, T, Fs)
    t = d.teacher_features(data, subset)  # (V, B, T, Ft)
    assert t.shape == (len(subset), B, T, teacher.feat_size)
    assert not t.requires_grad
    p = d.project(t, subset)
    assert p.shape == (len(subset), B, T, wm.feat_size)
    w = d.weights(t, s)
    assert w.shape == (len(subset), B, T)
    torch.testing.assert_close(w.sum(0), torch.ones(B, T))
    # The relevance network reads sg(s): it never pushes the student's latents.
    assert torch.autograd.grad(w.sum(), s, allow_unused=True)[0] is None
    # Conditioning: the same teacher feature under two task ids projects differently.
    if len(subset) >= 2:
        same = t[:1].expand(2, *t.shape[1:])
        out = d.project(same, subset[:2])
        assert not torch.allclose(out[0], out[1]) or d.proj.task.task_bias.abs().sum() == 0


def test_teacher_and_student_sizes_may_differ_and_unconditioned_variants():
    _, teacher = make_teacher(3, dyn_deter=24, dyn_stoch=6)
    for extra, kind in ((["--conditional_distill", "False"], "mlp"), (["--distill_mode", "vid2act"], "linear")):
        config = make_config("--dyn_deter", "12", *extra)
        if kind == "linear":
            _, teacher = make_teacher(3, "label_cnn", dyn_deter=24, dyn_stoch=6)
        wm = WorldModel(config, A)
        assert wm.feat_size != teacher.feat_size
        d = build_method(config, teacher, wm.feat_size, verbose=False)
        assert isinstance(d.proj, torch.nn.Linear) == (kind == "linear")
        loss, metrics = run_update(d, wm, wm.preprocess(make_batch()))
        assert loss.shape == () and torch.isfinite(loss), metrics


def test_loss_value_matches_the_formula_and_schedule():
    _, _, wm, d = make_pair(3, "--relevance_floor", "0.2", "--distill_weight", "linear(2,0,4)")
    data = wm.preprocess(make_batch())
    _, _, post = wm.loss(data)
    s = wm.dynamics.get_feat(post)
    with torch.no_grad():
        t = d.teacher_features(data)
        p, w = d.project(t), d.weights(t, s)
        expect = (torch.clamp(w, min=0.2) * (p - s).pow(2).sum(-1) / wm.feat_size).mean((1, 2)).sum()
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    assert metrics["distill/scale"] == pytest.approx(2.0)
    torch.testing.assert_close(loss, 2.0 * expect)
    assert metrics["distill/loss"] == pytest.approx(float(expect), rel=1e-5)
    for _ in range(3):
        d.world_model_loss(data, post, wm, 0)
    calls = []
    original = d.teacher.task_features
    d.teacher.task_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    assert metrics["distill/scale"] == pytest.approx(0.0)  # linear(2,0,4) after 4 updates
    assert float(loss) == 0.0 and not calls  # a weight of zero does not run the teacher


def test_cost_knobs_bf16_teacher_and_distill_batch():
    _, teacher, wm, d = make_pair(3, "--teacher_precision", "16", "--distill_batch", "2")
    data = wm.preprocess(make_batch())
    exact = teacher.task_features(data, [0, 1, 2]).detach()
    fast = d.teacher_features(data, [0, 1, 2])
    assert fast.dtype == torch.float32
    assert not torch.equal(fast, exact)  # the encoder did run in bf16
    # bf16 rounds the encoder only (float32 gates and filtering), so the targets stay close.
    assert (fast - exact).abs().max() < 0.02 * exact.abs().max(), (fast - exact).abs().max()
    seen = []
    original = teacher.task_features
    teacher.task_features = lambda data, *a, **k: seen.append(data["action"].shape[0]) or original(data, *a, **k)
    loss, metrics = run_update(d, wm, data)
    assert seen == [2] and torch.isfinite(loss)
    loss.backward()  # gradients reach the student through the distilled subset only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.encoders.parameters())


def test_a_teacher_pretrained_in_bf16_filters_and_gates_in_float32_when_read(monkeypatch):
    """A teacher pretrained with `precision: 16` autocasts itself to bf16 where the device has native bf16. Read
    by a distiller or by OOD scoring, only its encoder may run in bf16 (`teacher_precision`); the gates and the
    RSSM filtering stay float32. Native bf16 is assumed here (this CPU may lack it) so that autocast is live."""
    from ood import embed

    monkeypatch.setattr(tools, "native_bf16", lambda device: True)
    config, teacher = make_teacher(2, obs="pixel", precision=16)
    seen = {}
    record = lambda name: lambda module, args, out: seen.setdefault(name, set()).add(out.dtype)
    teacher.dynamics.cell.linear.register_forward_hook(record("rssm"))
    teacher.dynamics.post_head.register_forward_hook(record("posterior"))
    gate = teacher.encoder.gate
    monkeypatch.setattr(teacher.encoder, "gate", lambda f, k: seen.setdefault("gate", set()).add(f.dtype) or gate(f, k))
    teacher.encoder.conv.register_forward_hook(record("experts"))
    data = teacher.preprocess(make_batch(obs="pixel"))
    with torch.no_grad():
        teacher.observe({**data, "task": torch.zeros(B, dtype=torch.long)})
    assert seen.pop("rssm") == {torch.bfloat16}, "the check must see a bf16 filter: autocast is live here"
    seen.clear()
    for precision, experts in (("32", torch.float32), ("16", torch.bfloat16)):
        d = build_method(make_config("--teacher_precision", precision, obs="pixel"), teacher, 24, verbose=False)
        d.teacher_features(data)
        assert seen == {"rssm": {torch.float32}, "posterior": {torch.float32}, "gate": {torch.float32},
                        "experts": {experts}}, (precision, seen)
        seen.clear()
    mask = np.ones((B, T), bool)
    embed.embed_batch(teacher, make_batch(obs="pixel"), mask, [0, 1])
    assert seen == {"rssm": {torch.float32}, "posterior": {torch.float32}, "gate": {torch.float32},
                    "experts": {torch.float32}}, seen


def test_teacher_precision_auto_follows_native_bf16_support():
    native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    cpu = torch.device("cpu")
    for value, want in (("auto", native), ("16", True), ("32", False)):
        _, _, _, d = make_pair(2, "--teacher_precision", value)
        assert d.teacher_bf16(cpu) is want, value
    with pytest.raises(MethodError, match="teacher_precision must be auto, 16 or 32"):
        make_pair(2, "--teacher_precision", "8")


# --- pruning -------------------------------------------------------------------------------------------

def test_pruning_drops_lowest_ema_at_the_right_updates_and_stops_at_min_active():
    _, _, wm, d = make_pair(4, "--prune_every", "3", "--min_active_tasks", "2", "--relevance_ema", "0.999")
    # EMAs far apart so the few updates below cannot reorder them.
    d.ema.copy_(torch.tensor([0.40, 0.10, 0.30, 0.20]))
    data = wm.preprocess(make_batch())
    active = []
    for update in range(1, 13):
        _, metrics = run_update(d, wm, data, step=100 * update)
        active.append(list(d.active_ids))
        assert metrics["distill/active_tasks"] == len(active[-2] if update > 1 else [0, 1, 2, 3])
    assert active[1] == [0, 1, 2, 3]  # nothing before update 3
    assert active[2] == [0, 2, 3]  # update 3 drops task b (EMA 0.10)
    assert active[4] == [0, 2, 3]
    assert active[5] == [0, 2]  # update 6 drops task d (EMA 0.20)
    assert active[-1] == [0, 2]  # never below min_active_tasks
    events = d.events
    assert [(e["update"], e["task"], e["step"]) for e in events] == [(3, TASKS[1], 300), (6, TASKS[3], 600)]
    assert events[0]["ema"] == pytest.approx(0.10, abs=0.01)


def test_prune_threshold_keeps_tasks_whose_ema_is_high_enough():
    _, _, wm, d = make_pair(4, "--prune_every", "2", "--min_active_tasks", "1", "--relevance_ema", "0.999",
                            "--prune_threshold", "0.15")
    d.ema.copy_(torch.tensor([0.40, 0.10, 0.30, 0.20]))
    data = wm.preprocess(make_batch())
    for update in range(8):
        run_update(d, wm, data, update)
    assert d.active_ids == [0, 2, 3]  # only b was below 0.15


def test_pruning_events_are_logged_once_even_when_the_logger_comes_late(tmp_path, capsys):
    from tools import Logger

    _, _, wm, d = make_pair(3, "--prune_every", "1", "--min_active_tasks", "1")
    d.verbose = True
    data = wm.preprocess(make_batch())
    run_update(d, wm, data, 10)  # pruned without a logger
    logger = Logger(tmp_path, tensorboard=False)
    d.logger = logger
    run_update(d, wm, data, 20)
    run_update(d, wm, data, 30)  # at min_active_tasks: no event
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in lines] == [("prune", 10), ("prune", 20)]
    assert {"task", "ema", "update", "active"} <= set(lines[0])
    assert capsys.readouterr().out.count("pruned source task") == 2


def test_pruned_views_are_not_evaluated_and_get_no_gradient():
    _, teacher, wm, d = make_pair(4, "--prune_every", "2", "--min_active_tasks", "2")
    d.ema.copy_(torch.tensor([0.40, 0.10, 0.30, 0.20]))
    gated: list[int] = []
    original = teacher.encoder.gate

    def counting_gate(features, task):
        gated.append(int(task))
        return original(features, task)

    teacher.encoder.gate = counting_gate
    data = wm.preprocess(make_batch())
    for step in range(4):  # prunes b at update 2, d at update 4
        run_update(d, wm, data, step)
    assert d.active_ids == [0, 2]
    gated.clear()
    d.zero_grad(set_to_none=True)
    wm.zero_grad(set_to_none=True)
    loss, metrics = run_update(d, wm, data, 5)
    loss.backward()
    assert sorted(set(gated)) == [0, 2] and len(gated) == 2  # one gate per active view, nothing else
    assert f"distill/weight_{TASKS[1]}" not in metrics and f"distill/weight_{TASKS[0]}" in metrics
    bias_grad = d.proj.task.task_bias.grad  # (K, U): the one-hot rows of the projection input
    assert bias_grad[[1, 3]].abs().sum() == 0 and bias_grad[[0, 2]].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # Gradients reach the student's encoder through s.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.encoders.parameters())


def test_cost_after_pruning_is_set_by_min_active_tasks_not_k():
    """FLOPs of one distillation loss: K=6 pruned to 2 must equal a K=2 teacher of the same sizes."""
    flops = {}
    for k in (6, 2):
        _, _, wm, d = make_pair(k, "--prune_every", "1", "--min_active_tasks", "2")
        data = wm.preprocess(make_batch())
        for step in range(k):
            run_update(d, wm, data, step)
        assert len(d.active_ids) == 2
        _, _, post = wm.loss(data)
        with FlopCounterMode(display=False) as counter:
            d.world_model_loss(data, post, wm, 0)
        flops[k] = counter.get_total_flops()
    assert flops[6] == flops[2], (f"a distillation update of a K=6 teacher pruned to 2 views costs {flops[6]} FLOPs, "
                                  f"a K=2 teacher {flops[2]}: something task-specific still runs for pruned views "
                                  f"(e.g. all K multi-head RSSM heads evaluated before selecting)")


def test_pruning_state_resumes_from_state_dict():
    config, teacher, wm, d = make_pair(4, "--prune_every", "2", "--min_active_tasks", "2")
    data = wm.preprocess(make_batch())
    for step in range(3):
        run_update(d, wm, data, step)
    state = d.state_dict()
    fresh = build_method(config, teacher, wm.feat_size, verbose=False)
    fresh.load_state_dict(state)
    assert fresh.active_ids == d.active_ids and len(fresh.active_ids) == 3
    assert fresh.n_updates == d.n_updates == 3
    torch.testing.assert_close(fresh.ema, d.ema)
    run_update(fresh, wm, data, 3)
    run_update(d, wm, data, 3)
    assert fresh.active_ids == d.active_ids and len(d.active_ids) == 2  # both prune at update 4
    _, other = make_teacher(5)
    with pytest.raises(MethodError, match="same teacher"):
        build_method(config, other, wm.feat_size, verbose=False).load_state_dict(state, strict=False)


# --- learning ------------------------------------------------------------------------------------------

def fit_distill_loss(wm, d, data, updates: int = 60) -> tuple[list[float], bool]:
    """Train student and distiller on the distillation loss alone; returns the loss per update and whether
    the first backward pass reached the student's encoder."""
    opt = torch.optim.Adam([*wm.parameters(), *d.parameters()], lr=3e-3)
    values, reached = [], False
    for step in range(updates):
        _, _, post = wm.loss(data)
        loss, metrics = d.world_model_loss(data, post, wm, step)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in wm.encoders.parameters())
        opt.step()
        values.append(metrics["distill/loss"])
    return values, reached


def test_loss_decreases_when_student_features_are_trained_to_match_a_fixed_teacher():
    torch.manual_seed(0)
    _, _, wm, d = make_pair(3, "--distill_hidden", "64")
    values, reached = fit_distill_loss(wm, d, wm.preprocess(make_batch()))
    assert reached
    assert values[-1] < 0.3 * values[0], values[::10]


def test_student_to_teacher_direction_predicts_teacher_features_from_the_student():
    torch.manual_seed(0)
    _, teacher, wm, d = make_pair(3, "--distill_direction", "student_to_teacher", "--distill_hidden", "64")
    data = wm.preprocess(make_batch())
    _, _, post = wm.loss(data)
    s = wm.dynamics.get_feat(post)
    q = d.project(s.unsqueeze(0).expand(2, *s.shape), [0, 2])
    assert q.shape == (2, B, T, teacher.feat_size)
    values, reached = fit_distill_loss(wm, d, data)
    assert reached
    assert values[-1] < 0.5 * values[0], values[::10]
    with pytest.raises(MethodError, match="distill_direction"):
        build_method(make_config("--distill_direction", "sideways"), teacher, wm.feat_size, verbose=False)


def test_reward_mode_matches_the_student_reward_to_the_most_relevant_teacher_view():
    config, teacher, wm, d = make_pair(3, "--reward_distill_coef", "0.45", mode="reward")
    assert list(d.parameters()) == []
    data = wm.preprocess(make_batch())
    _, _, post = wm.loss(data)
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    with torch.no_grad():
        t = teacher.task_features(data, [0, 1, 2])
        r = teacher.predict_reward(t, torch.arange(3))
        err = (r - data["reward"]).pow(2).mean((1, 2))
        best = int(metrics["distill/reward_view"])
        expect = 0.45 * (wm.predict_reward(wm.dynamics.get_feat(post)) - r[best]).pow(2).mean()
    torch.testing.assert_close(loss, expect)
    assert best == int(torch.softmax(-err, 0).argmax())
    loss.backward()
    assert any(p.grad is not None for p in wm.reward.parameters())


def test_reward_mode_picks_its_view_among_the_active_ones():
    _, teacher, wm, d = make_pair(3, mode="reward")
    d.set_active([1, 2])
    d.ema.copy_(torch.tensor([0.9, 0.02, 0.08]))  # the inactive task 0 has the highest EMA
    data = wm.preprocess(make_batch())
    _, _, post = wm.loss(data)
    loss, metrics = d.world_model_loss(data, post, wm, 0)
    assert int(metrics["distill/reward_view"]) in (1, 2) and torch.isfinite(loss)


# --- loading and compatibility ------------------------------------------------------------------------

def _save_teacher(path: pathlib.Path, config, teacher) -> pathlib.Path:
    return tools.save_checkpoint(path, teacher_payload(teacher, None, 3, config))


def _agent(config):
    from models.agent import Agent

    return Agent(config, None, A, "cpu")


def test_build_distiller_strict_load_and_clear_errors(tmp_path):
    from tools import UsageError
    from training.student import build_distiller

    tconfig, teacher = make_teacher(3)
    good = _save_teacher(tmp_path / "teacher.pt", tconfig, teacher)
    config = make_config("--use_distill", "True", "--teacher_model_path", str(good))
    agent = _agent(config)
    d = build_distiller(config, agent, "cpu")
    assert d.task_names == teacher.task_names and d.teacher is not agent.wm
    # Same weights as the saved teacher, and frozen.
    for (name, a), b in zip(d.teacher.state_dict().items(), teacher.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert not any(p.requires_grad for p in d.teacher.parameters()) and not d.teacher.training

    # A file whose weights do not fit the architecture in its stored config.
    payload = teacher_payload(teacher, None, 3, tconfig)
    payload["config"]["dyn_deter"] = 20
    tools.save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(UsageError, match="do not fit"):
        build_distiller({**config, "teacher_model_path": str(tmp_path / "bad.pt")}, agent, "cpu")
    with pytest.raises(UsageError, match="teacher_model_path"):
        build_distiller({**config, "teacher_model_path": ""}, agent, "cpu")
    with pytest.raises(UsageError, match="no such file"):
        build_distiller({**config, "teacher_model_path": str(tmp_path / "missing.pt")}, agent, "cpu")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(UsageError, match="not a COMET checkpoint"):
        build_distiller({**config, "teacher_model_path": str(tmp_path / "foreign.pt")}, agent, "cpu")
    # Mode vs encoder: vid2act needs a label_cnn teacher, comet a moe one.
    with pytest.raises(UsageError, match="label_cnn"):
        build_distiller({**config, "distill_mode": "vid2act"}, agent, "cpu")
    lconfig, lteacher = make_teacher(3, "label_cnn")
    label = _save_teacher(tmp_path / "label.pt", lconfig, lteacher)
    with pytest.raises(UsageError, match="needs a 'moe' teacher"):
        build_distiller({**config, "teacher_model_path": str(label)}, agent, "cpu")
    assert build_distiller({**config, "teacher_model_path": str(label), "distill_mode": "vid2act"}, agent, "cpu")


def test_pixel_teacher_with_state_student_is_rejected_at_build_time(tmp_path):
    from tools import UsageError
    from training.student import build_distiller

    tconfig, teacher = make_teacher(2, obs="pixel")
    path = _save_teacher(tmp_path / "pixel.pt", tconfig, teacher)
    config = make_config("--use_distill", "True", "--teacher_model_path", str(path))
    with pytest.raises(UsageError, match=r"obs 'pixel'.*no \['image'\]"):
        build_distiller(config, _agent(config), "cpu")
    # A student with both observations can use the pixel teacher.
    both = make_config("--obs", "both", "--use_distill", "True", "--teacher_model_path", str(path))
    check_compatible(both, teacher, {"image": (64, 64, 3), "state": (39,)}, A)
    with pytest.raises(MethodError, match="shape"):
        check_compatible(both, teacher, {"image": (32, 32, 3), "state": (39,)}, A)


def test_distiller_parameters_are_in_one_optimizer_and_teacher_in_none(tmp_path):
    from training.student import build_distiller

    tconfig, teacher = make_teacher(3)
    path = _save_teacher(tmp_path / "teacher.pt", tconfig, teacher)
    config = make_config("--use_distill", "True", "--teacher_model_path", str(path))
    agent = _agent(config)
    agent.attach_distiller(build_distiller(config, agent, "cpu"))
    groups = [agent.wm_opt, agent.distill_opt, *[o for o in vars(agent.behavior).values()
                                                 if isinstance(o, torch.optim.Optimizer)]]
    ids = [id(p) for opt in groups for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    teacher_ids = {id(p) for p in agent.distiller.teacher.parameters()}
    assert not teacher_ids & set(ids)
    assert {id(p) for p in agent.distiller.parameters()} == {id(p) for g in agent.distill_opt.param_groups
                                                              for p in g["params"]}
    assert not any(k.startswith("teacher") for k in agent.distiller.state_dict())
    agent.train_mode(True)
    assert not agent.distiller.teacher.training


# --- end to end ----------------------------------------------------------------------------------------

TINY = ["--configs", "defaults", "metaworld_state", "debug", "--progress", "False", "--threads", "1"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A tiny collected dataset (2 source tasks) and a moe and a label_cnn teacher pretrained on it."""
    import collect_data
    import dreamer_pretrain

    root = tmp_path_factory.mktemp("distill_e2e")
    tasks = "metaworld_reach,metaworld_push"
    collect_data.main(["--tasks", tasks, "--episodes", "2", "--obs", "state", "--noise", "0.1", "--random_frac",
                       "0.1", "--workers", "1", "--out", str(root / "data"), "--seed", "0", *TINY])
    dirs = f"{root / 'data' / 'reach'},{root / 'data' / 'push'}"
    out = {}
    for mode in ("moe", "label_cnn"):
        code = dreamer_pretrain.main([*TINY, "--source_tasks", tasks, "--source_task_dirs", dirs,
                                      "--teacher_encoder_mode", mode, "--logdir", str(root / mode)])
        assert code == 0 and (root / mode / "teacher.pt").is_file()
        out[mode] = root / mode / "teacher.pt"
    out["root"] = root
    return out


@pytest.mark.parametrize("mode,teacher", [("comet", "moe"), ("vid2act", "label_cnn"), ("reward", "moe")])
def test_each_distill_mode_runs_end_to_end(teachers, mode, teacher):
    import dreamer_distill

    logdir = teachers["root"] / f"student_{mode}"
    code = dreamer_distill.main([*TINY, "--use_distill", "True", "--distill_mode", mode, "--teacher_model_path",
                                 str(teachers[teacher]), "--logdir", str(logdir), "--prune_every", "3",
                                 "--min_active_tasks", "1"])
    assert code == 0
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    scalars = [r for r in lines if "train/distill/loss" in r]
    assert scalars and all(np.isfinite(r["train/distill/loss"]) for r in scalars)
    assert any("eval/success_any" in r for r in lines)
    prunes = [r for r in lines if r.get("event") == "prune"]
    assert len(prunes) == (1 if mode == "comet" else 0)  # 2 tasks -> 1, then min_active_tasks
    # Resume keeps the pruning state: a second run with more steps starts from the checkpoint.
    if mode == "comet":
        code = dreamer_distill.main([*TINY, "--use_distill", "True", "--teacher_model_path", str(teachers[teacher]),
                                     "--logdir", str(logdir), "--prune_every", "3", "--min_active_tasks", "1",
                                     "--steps", "200"])
        assert code == 0
        payload = tools.load_checkpoint(logdir / "latest.pt")
        assert payload["agent"]["distiller"]["active"].tolist() == [False, True] or \
            payload["agent"]["distiller"]["active"].tolist() == [True, False]


def test_distill_run_with_wrong_teacher_fails_cleanly(teachers, capsys):
    import dreamer_distill

    code = dreamer_distill.main([*TINY, "--use_distill", "True", "--distill_mode", "vid2act", "--teacher_model_path",
                                 str(teachers["moe"]), "--logdir", str(teachers["root"] / "wrong")])
    assert code == 2
    assert "label_cnn" in capsys.readouterr().err
