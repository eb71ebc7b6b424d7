"""Distillation methods: the registry, hook isolation, behaviour teachers (relabelled BC, fitted Q),
their storage in the teacher checkpoint, `policy` and `critic` end to end with resume, and bad inputs.

Real collected Meta-World data and real stage scripts at tiny sizes. Shape legend: docs/architecture.md.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tools
import methods
import configs
from methods import behaviour
from training import behaviour as behaviour_fit
from models.teacher_io import load_teacher, teacher_payload
from models.world_model import TeacherWorldModel

TASKS = "metaworld_reach,metaworld_push"
TINY = ["--configs", "defaults", "metaworld_state", "debug", "--progress", "False", "--threads", "1"]
A = 4


def config(*extra: str):
    return configs.load_config([*TINY, *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small real dataset of 2 source tasks (12 noisy expert episodes each, 150 policy steps), and its
    relabelled transitions split by episode into training and held-out parts."""
    import collect_data

    root = tmp_path_factory.mktemp("methods")
    collect_data.main(["--tasks", TASKS, "--episodes", "12", "--obs", "state", "--noise", "0.1", "--random_frac",
                       "0.1", "--workers", "1", "--out", str(root / "data"), "--seed", "0",
                       "--configs", "defaults", "metaworld_state", "--progress", "False"])
    dirs = [str(root / "data" / "reach"), str(root / "data" / "push")]
    data = behaviour_fit.load_transitions(TASKS.split(","), dirs)
    parts = [behaviour_fit.split(d, 0.34, 0) for d in data]
    return {"root": root, "dirs": dirs, "train": [p[0] for p in parts], "held": [p[1] for p in parts]}


# --- registry ------------------------------------------------------------------------------------------

def test_registry_finds_every_method_and_names_the_known_ones_for_an_unknown_one():
    for name in ("comet", "vid2act", "reward", "policy", "critic"):
        assert methods.method_class(name).name == name
    with pytest.raises(methods.MethodError) as err:
        methods.method_class("polytask")
    assert "polytask" in str(err.value) and all(n in str(err.value) for n in methods.REGISTRY)
    # The hooks each method defines: only policy/critic reach the actor, only comet/vid2act/reward the model.
    hooks = {n: [h for h in ("world_model_loss", "actor_loss", "critic_loss") if getattr(c, h) is not None]
             for n, c in methods.REGISTRY.items()}
    assert hooks == {"comet": ["world_model_loss"], "vid2act": ["world_model_loss"], "reward": ["world_model_loss"],
                     "policy": ["actor_loss"], "critic": ["actor_loss"]}


def test_unknown_distill_mode_is_one_line_naming_the_known_ones(tmp_path, capsys):
    import dreamer_distill

    teacher = tmp_path / "t.pt"
    cfg = config("--source_tasks", TASKS)
    tools.save_checkpoint(teacher, teacher_payload(TeacherWorldModel(cfg, A), None, 0, cfg))
    code = dreamer_distill.main([*TINY, "--use_distill", "True", "--distill_mode", "polytask",
                                 "--teacher_model_path", str(teacher), "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "known methods: comet, vid2act, reward, policy, critic" in err[0]


# --- hooks ---------------------------------------------------------------------------------------------

def _grads(agent, module, data, post, step=0) -> list[torch.Tensor]:
    """The gradients of `module` (the agent's actor or critic) in one behavior update with the agent's
    hooks, recorded as they are computed (the update zeroes .grad after stepping)."""
    grads = []
    handles = [p.register_hook(lambda g: grads.append(g.clone()) or g) for p in module.parameters()]
    torch.manual_seed(123)
    agent.behavior.train_step(agent.wm, post, step, **agent.behavior_hooks(data, post, step))
    for h in handles:
        h.remove()
    return grads


def _same_agents(source, modes: dict):
    """Agents with identical weights and optimizer states: 'plain' (no method) and one per {label: flags}."""
    from models.agent import Agent

    cfg = config("--source_tasks", TASKS)
    torch.manual_seed(0)
    teacher = TeacherWorldModel(cfg, A).eval()
    teachers = behaviour.BehaviourTeachers(actor=behaviour_fit.fit_actor(source["train"], 5, units=16),
                                           critic=behaviour_fit.fit_critic(source["train"], 5, 0.99, units=16))
    agents = {}
    for name, flags in {"plain": None, **modes}.items():
        torch.manual_seed(1)
        agents[name] = Agent(cfg, {"state": (39,)}, A, "cpu")
        if flags is not None:
            mode = config("--source_tasks", TASKS, *flags)
            agents[name].attach_distiller(methods.build_method(mode, teacher, agents[name].wm.feat_size, teachers))
    state = agents["plain"].state_dict()
    for a in agents.values():
        a.wm.load_state_dict(state["wm"])
        a.behavior.load_state_dict(state["behavior"])
        a.behavior.load_optimizer_state(state["optimizers"])
    rng = np.random.default_rng(0)
    batch = {"state": rng.normal(size=(4, 8, 39)).astype(np.float32),
             "action": rng.uniform(-1, 1, (4, 8, A)).astype(np.float32),
             "reward": rng.uniform(0, 1, (4, 8)).astype(np.float32), "discount": np.ones((4, 8), np.float32),
             "is_first": np.zeros((4, 8), bool)}
    wm = agents["plain"].wm
    data = wm.preprocess(batch)
    with torch.no_grad():
        _, _, post = wm.loss(data)
    return agents, data, post


def test_a_method_without_an_actor_hook_changes_no_actor_gradient(source):
    agents, data, post = _same_agents(source, {"comet": ["--distill_mode", "comet"],
                                               "policy": ["--distill_mode", "policy", "--policy_coef", "1.0"]})
    grads = {name: _grads(a, a.behavior.actor, data, post) for name, a in agents.items()}
    assert agents["comet"].behavior_hooks(data, post, 0) == {}
    assert len(grads["plain"]) == len(grads["comet"]) > 0
    assert all(torch.equal(g, h) for g, h in zip(grads["plain"], grads["comet"]))
    assert any(not torch.allclose(g, h) for g, h in zip(grads["plain"], grads["policy"]))


def test_the_critic_hook_exists_only_with_a_weight_and_is_the_only_one_to_reach_the_critic(source):
    agents, data, post = _same_agents(source, {
        "actor_only": ["--distill_mode", "critic"],
        "with_value": ["--distill_mode", "critic", "--critic_value_coef", "1.0"]})
    assert set(agents["actor_only"].behavior_hooks(data, post, 0)) == {"actor_extra"}
    assert set(agents["with_value"].behavior_hooks(data, post, 0)) == {"actor_extra", "critic_extra"}
    grads = {name: _grads(a, a.behavior.critic, data, post) for name, a in agents.items()}
    # The actor hook changes the actor's step, not the critic's gradient in the same update.
    assert all(torch.equal(g, h) for g, h in zip(grads["plain"], grads["actor_only"]))
    assert any(not torch.allclose(g, h) for g, h in zip(grads["plain"], grads["with_value"]))


# --- behaviour teachers --------------------------------------------------------------------------------

def test_relabelled_behaviour_cloning_halves_the_held_out_action_error(source):
    before = behaviour_fit.action_error(behaviour_fit.fit_actor(source["train"], 0, batch=64, units=64), source["held"])
    actor = behaviour_fit.fit_actor(source["train"], 400, batch=64, units=64)
    after = behaviour_fit.action_error(actor, source["held"])
    for b, a in zip(before, after):
        assert a < 0.5 * b, (before, after)
    # The labels are the experts' actions, not the noisy ones in the files.
    d = source["held"][0]
    assert not np.allclose(d.expert, d.action) and np.abs(d.expert).max() <= 1.0


def test_teacher_critic_ranks_expert_actions_above_random_ones_on_held_out_states(source):
    critic = behaviour_fit.fit_critic(source["train"], 400, 0.99, batch=64, units=64)
    ranking = behaviour_fit.expert_ranking(critic, source["held"])
    assert all(r > 0.8 for r in ranking), ranking
    assert float(critic.value_scale) > 1.0  # values come back in reward units


# --- checkpoint ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_file(source):
    """A teacher pretrained by the real stage script with both behaviour teachers."""
    import dreamer_pretrain

    logdir = source["root"] / "teacher"
    code = dreamer_pretrain.main([*TINY, "--source_tasks", TASKS, "--source_task_dirs", ",".join(source["dirs"]),
                                  "--teacher_actor_steps", "200", "--teacher_critic_steps", "200",
                                  "--teacher_behaviour_units", "32", "--teacher_behaviour_batch", "64",
                                  "--logdir", str(logdir)])
    assert code == 0
    return logdir / "teacher.pt"


def test_checkpoint_with_behaviour_teachers_round_trips_and_loads_strictly(teacher_file, source, tmp_path):
    teacher, meta = load_teacher(teacher_file)
    teachers = behaviour.load(meta, teacher_file)
    assert isinstance(teachers.actor, behaviour.TeacherActor) and isinstance(teachers.critic, behaviour.TeacherCritic)
    stored = tools.load_checkpoint(teacher_file)["behaviour"]
    for kind in ("actor", "critic"):
        for name, value in getattr(teachers, kind).state_dict().items():
            assert torch.equal(value, stored[kind]["state_dict"][name]), (kind, name)
    # Fitted, not initial: the stored actor imitates the expert on held-out states.
    assert max(behaviour_fit.action_error(teachers.actor, source["held"])) < 0.15
    # Strict: a missing weight is an error naming the file.
    payload = tools.load_checkpoint(teacher_file)
    payload["behaviour"]["actor"]["state_dict"].pop("mean")
    bad = tools.save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(tools.CheckpointError, match="bad.pt.*behaviour actor"):
        behaviour.load(load_teacher(bad)[1], bad)


# --- end to end ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode,extra", [("policy", []), ("critic", ["--critic_warmup", "3"])])
def test_policy_and_critic_modes_run_end_to_end_and_resume(teacher_file, mode, extra, capsys):
    import dreamer_distill

    logdir = teacher_file.parent.parent / f"student_{mode}"
    args = [*TINY, "--use_distill", "True", "--distill_mode", mode, "--teacher_model_path", str(teacher_file),
            "--logdir", str(logdir), "--min_active_tasks", "1", *extra]
    assert dreamer_distill.main(args) == 0
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/distill/loss"] for r in rows if "train/distill/loss" in r]
    assert losses and all(np.isfinite(losses))
    assert any("eval/success_any" in r for r in rows)
    first = tools.load_checkpoint(logdir / "latest.pt")
    if mode == "critic":
        assert int(first["agent"]["distiller"]["warmed"]) == 3
        assert "critic warm-up: 3 updates" in capsys.readouterr().out
    assert dreamer_distill.main([*args, "--steps", "240"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "warm-up" not in out  # the warm start is not repeated
    last = tools.load_checkpoint(logdir / "latest.pt")
    assert last["step"] > first["step"] and last["agent"]["distiller"]["updates"] > first["agent"]["distiller"]["updates"]


# --- bad inputs ----------------------------------------------------------------------------------------

def test_policy_mode_with_a_teacher_without_an_actor_is_one_clear_line(source, tmp_path, capsys):
    import dreamer_distill

    cfg = config("--source_tasks", TASKS)
    path = tools.save_checkpoint(tmp_path / "plain.pt", teacher_payload(TeacherWorldModel(cfg, A), None, 0, cfg))
    code = dreamer_distill.main([*TINY, "--use_distill", "True", "--distill_mode", "policy",
                                 "--teacher_model_path", str(path), "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "needs a teacher with a behaviour actor" in err[0] and "--teacher_actor_steps" in err[0]


def test_teacher_actor_with_another_action_size_is_one_clear_line(source, tmp_path, capsys):
    import dreamer_distill

    cfg = config("--source_tasks", TASKS)
    actor = behaviour.TeacherActor(39, 3, 2, 8, 1)
    payload = teacher_payload(TeacherWorldModel(cfg, A), None, 0, cfg,
                              {"behaviour": behaviour.payload(behaviour.BehaviourTeachers(actor=actor))})
    path = tools.save_checkpoint(tmp_path / "act3.pt", payload)
    code = dreamer_distill.main([*TINY, "--use_distill", "True", "--distill_mode", "policy",
                                 "--teacher_model_path", str(path), "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "action size 3" in err[0] and "is 4" in err[0]


def test_consolidation_evaluates_the_teacher_actor_and_the_experts_in_the_real_env(teacher_file, tmp_path, capsys):
    from training import consolidation

    out = tmp_path / "consolidation.json"
    code = consolidation.main([*TINY, "--teacher_model_path", str(teacher_file), "--eval_episodes", "2",
                               "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == TASKS.split(",")
    for task, r in results.items():
        assert r["actor"]["episodes"] == r["expert"]["episodes"] == 2
        assert 0.0 <= r["actor"]["success_any"] <= 1.0
    assert any(r["expert"]["return"] > 0 for r in results.values())
    assert "metaworld_push" in capsys.readouterr().out


def test_behaviour_teachers_on_pixel_only_data_are_one_clear_error():
    episode = {"image": np.zeros((3, 64, 64, 3), np.uint8), "action": np.zeros((3, A), np.float32),
               "reward": np.zeros(3, np.float32), "discount": np.ones(3, np.float32)}
    with pytest.raises(behaviour.BehaviourError, match="--obs state or --obs both"):
        behaviour_fit.task_transitions({"ep": episode}, "metaworld_reach", "data/reach")
