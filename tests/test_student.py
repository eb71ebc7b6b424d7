"""The student loop end to end on the real Meta-World env at toy scale: files, resume, determinism, errors."""
import json

import numpy as np
import pytest
import torch

import tools
import dreamer_distill
from training.student import Trainer
import replay
import configs
from models.agent import MAX_NONFINITE, Agent

TINY = ["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--task", "metaworld_reach",
        "--device", "cpu", "--progress", "False", "--threads", "1"]


def run(logdir, *flags):
    return dreamer_distill.main([*TINY, "--logdir", str(logdir), *flags])


def records(logdir):
    lines = (logdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train_records(logdir):
    return [r for r in records(logdir) if "train/model_loss" in r]


@pytest.mark.slow
@pytest.mark.timeout_hint(60)
@pytest.mark.parametrize("obs", ["state", "pixel"])
def test_run_writes_episodes_metrics_checkpoint_and_resumes(tmp_path, obs, capsys):
    logdir = tmp_path / "run"
    steps = ["--obs", obs, "--time_limit", "40", "--eval_every", "80"]
    assert run(logdir, *steps, "--steps", "160") == 0
    for name in ("config.yaml", "metrics.jsonl", "latest.pt"):
        assert (logdir / name).is_file(), name
    episodes = replay.load_dir(logdir / "train_eps")
    assert len(episodes) == 4  # 160 env steps / 40 per episode
    key = "image" if obs == "pixel" else "state"
    for ep in episodes.values():
        assert ep[key].shape[0] == 21  # 20 policy steps (action_repeat 2) + the reset observation
        assert (ep["action"][0] == 0).all() and np.abs(ep["action"]).max() <= 1.0
        assert ep["is_first"][0] and not ep["is_first"][1:].any()
    assert ep[key].shape[1:] == ((64, 64, 3) if obs == "pixel" else (39,))
    assert len(replay.load_dir(logdir / "eval_eps")) == 2  # evals at 80 and 160, one episode each
    evals = [r for r in records(logdir) if "eval/success_any" in r]
    assert [r["step"] for r in evals] == [80, 160]
    assert {"eval/return", "eval/success_final", "eval/length"} <= set(evals[0])
    first = train_records(logdir)
    assert first and {"train/actor_loss", "train/critic_loss", "train/imag_return", "perf/fps"} <= set(first[-1])
    saved = tools.load_checkpoint(logdir / "latest.pt")
    assert saved["step"] == 160 and saved["agent"]["updates"] > 0
    updates = saved["agent"]["updates"]

    capsys.readouterr()
    assert run(logdir, *steps, "--steps", "320") == 0
    assert "resuming" in capsys.readouterr().out
    saved = tools.load_checkpoint(logdir / "latest.pt")
    assert saved["step"] == 320 and saved["agent"]["updates"] > updates
    later = [r["step"] for r in records(logdir) if "step" in r]
    assert later == sorted(later) and later[-1] == 320, later  # the step counter continued
    assert len(replay.load_dir(logdir / "train_eps")) == 8

    capsys.readouterr()
    assert run(logdir, *steps, "--steps", "320") == 0
    assert "already done" in capsys.readouterr().out


@pytest.mark.timeout_hint(40)
def test_same_seed_gives_identical_losses(tmp_path):
    for name in ("a", "b"):
        assert run(tmp_path / name, "--steps", "120", "--seed", "3") == 0
    a, b = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert a and len(a) == len(b)
    assert any("train/return" in r for r in a)  # logs that cover only prefill episodes have no return
    for ra, rb in zip(a, b):
        for key in ("train/model_loss", "train/actor_loss", "train/critic_loss", "train/return"):
            assert ra.get(key) == rb.get(key), (key, ra.get(key), rb.get(key))
    assert run(tmp_path / "c", "--steps", "120", "--seed", "4") == 0
    assert train_records(tmp_path / "c")[0]["train/model_loss"] != a[0]["train/model_loss"]


def test_resume_false_on_a_non_empty_logdir_is_an_error(tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "notes.txt").write_text("old run")
    assert run(logdir, "--resume", "False") == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume True" in err
    assert sorted(p.name for p in logdir.iterdir()) == ["notes.txt"]  # nothing written


def test_missing_logdir_is_an_error(capsys):
    assert dreamer_distill.main(TINY) == 2
    assert "--logdir" in capsys.readouterr().err


def test_checkpointed_rng_state_carries_the_cuda_generators(monkeypatch, tmp_path):
    """With CUDA in use the CUDA generators' states are saved and restored (on as many GPUs as this machine has);
    without CUDA, nothing is saved for them and a checkpoint that has them still loads. The CUDA calls are
    stand-ins here (no GPU): what is checked is that the checkpoint logic reaches them."""
    from training.run_state import rng_state, set_rng_state

    assert "cuda" not in rng_state({})  # no CUDA on this machine
    gpus = {0: torch.tensor([1, 2], dtype=torch.uint8), 1: torch.tensor([3, 4], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [gpus[0].clone(), gpus[1].clone()])
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    state = rng_state({})
    assert [s.tolist() for s in state["cuda"]] == [[1, 2], [3, 4]]
    payload = tools.load_checkpoint(tools.save_checkpoint(tmp_path / "rng.pt", {"rng": state}))
    set_rng_state(payload["rng"], {})
    assert [s.tolist() for s in restored] == [[1, 2]]  # one GPU here: the first state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored.clear()
    set_rng_state(payload["rng"], {})  # a CPU-only machine resumes the CUDA run's checkpoint
    assert restored == []


def stop_training_at(monkeypatch, step: int, error: BaseException):
    """Make the loop raise `error` once it reaches env step `step`; returns the undo for the next run."""
    original = Trainer.train_due

    def stopping(self):
        if self.step >= step:
            raise error
        original(self)

    monkeypatch.setattr(Trainer, "train_due", stopping)
    return lambda: monkeypatch.setattr(Trainer, "train_due", original)


@pytest.mark.slow
@pytest.mark.timeout_hint(30)
def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, monkeypatch):
    logdir = tmp_path / "run"
    undo = stop_training_at(monkeypatch, 100, KeyboardInterrupt())
    assert run(logdir, "--steps", "160") == 130
    saved = tools.load_checkpoint(logdir / "latest.pt")
    assert saved["step"] == 100
    undo()
    assert run(logdir, "--steps", "160") == 0
    assert tools.load_checkpoint(logdir / "latest.pt")["step"] == 160


@pytest.mark.slow
@pytest.mark.timeout_hint(30)
def test_resume_after_a_crash_logs_each_step_once_and_keeps_the_superseded_rows(tmp_path, monkeypatch):
    logdir = tmp_path / "run"
    flags = ["--steps", "160", "--log_every", "20", "--checkpoint_every", "80"]
    undo = stop_training_at(monkeypatch, 140, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(logdir, *flags)
    assert tools.load_checkpoint(logdir / "latest.pt")["step"] == 80
    crashed = [r["step"] for r in train_records(logdir)]
    assert max(crashed) > 80  # rows the resumed run will log again
    undo()
    assert run(logdir, *flags) == 0
    steps = [r["step"] for r in train_records(logdir)]
    assert steps == sorted(set(steps)) and steps[-1] == 160, steps  # each step once, in order
    superseded = [json.loads(line)["step"] for line in (logdir / "metrics.superseded.jsonl").read_text().splitlines()]
    assert superseded and min(superseded) > 80 and set(crashed) - set(steps) <= set(superseded)
    # The episode finished at step 120 before the crash is set aside: the replay matches the step counter.
    assert len(replay.load_dir(logdir / "train_eps")) == 4  # 160 env steps / 40 per episode
    assert len(replay.load_dir(logdir / "train_eps" / "superseded")) == 1


# --- agent --------------------------------------------------------------------------------------------

def tiny_agent(**overrides):
    config = configs.load_config(TINY[:5])
    config.update(overrides)
    return Agent(config, {"state": (39,)}, 4, "cpu"), config


def tiny_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, t = config["batch_size"], config["batch_length"]
    data = {"state": rng.normal(size=(b, t, 39)).astype(np.float32),
            "action": rng.uniform(-1, 1, (b, t, 4)).astype(np.float32),
            "reward": rng.uniform(0, 1, (b, t)).astype(np.float32), "discount": np.ones((b, t), np.float32),
            "is_first": np.zeros((b, t), bool), "is_terminal": np.zeros((b, t), bool)}
    data["is_first"][:, 0] = True
    return data


def test_policy_resets_the_latent_state_where_is_first():
    torch.manual_seed(0)
    agent, _ = tiny_agent()
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(2, 39)).astype(np.float32), "is_first": np.array([True, True])}
    _, fresh = agent.policy(obs, None, training=True)
    state = fresh
    obs["is_first"] = np.array([False, False])
    for _ in range(3):
        _, state = agent.policy(obs, state, training=True)
    obs["is_first"] = np.array([True, False])
    action, state = agent.policy(obs, state, training=False)
    assert action.shape == (2, 4) and action.dtype == np.float32 and np.abs(action).max() <= 1
    # The deterministic state of a reset env does not depend on its history.
    assert torch.allclose(state[0]["deter"][0], fresh[0]["deter"][0])
    assert not torch.allclose(state[0]["deter"][1], fresh[0]["deter"][1])


def test_train_world_model_updates_the_world_model_only():
    torch.manual_seed(0)
    agent, config = tiny_agent()
    batch = tiny_batch(config)
    wm_before = [p.detach().clone() for p in agent.wm.parameters()]
    behavior_before = [p.detach().clone() for p in agent.behavior.parameters()]
    data, post, metrics = agent.train_world_model(batch, 0)
    assert metrics["model_skipped"] == 0.0 and torch.isfinite(metrics["model_loss"])
    assert sum(not torch.equal(a, p) for a, p in zip(wm_before, agent.wm.parameters())) > len(wm_before) // 2
    assert all(torch.equal(a, p) for a, p in zip(behavior_before, agent.behavior.parameters()))
    b, t = config["batch_size"], config["batch_length"]
    assert post["deter"].shape == (b, t, config["dyn_deter"]) and not post["deter"].requires_grad
    assert data["state"].shape == (b, t, 39) and agent.updates == 0  # `train` counts updates, not its halves


def test_non_finite_world_model_loss_is_skipped_then_raises():
    torch.manual_seed(0)
    agent, config = tiny_agent()
    batch = tiny_batch(config)
    batch["reward"][0, 3] = np.nan
    before = {k: v.clone() for k, v in agent.wm.state_dict().items()}
    behavior = {k: v.clone() for k, v in agent.behavior.state_dict().items() if k != "updates"}
    metrics = agent.train(batch, 0)
    assert metrics["model_skipped"] == 1.0
    # Skipped on the device: weights, Adam moments and step counts all as before, the behavior's too.
    assert all(torch.equal(v, before[k]) for k, v in agent.wm.state_dict().items())
    assert all(torch.equal(v, behavior[k]) for k, v in agent.behavior.state_dict().items() if k != "updates")
    assert all(float(s["step"]) == 0 for s in agent.wm_opt.state.values())
    agent.check_finite()  # one skip is survivable
    for step in range(MAX_NONFINITE - 2):
        agent.train(batch, step)
    agent.check_finite()  # MAX_NONFINITE - 1 in a row
    agent.train(tiny_batch(config, 1), 0)  # a finite update ends the run of skips
    for step in range(MAX_NONFINITE):
        agent.train(batch, step)
    with pytest.raises(FloatingPointError, match=f"non-finite for {MAX_NONFINITE} updates in a row"):
        agent.check_finite({"nonfinite_run": agent.health()["nonfinite_run"]})


def test_agent_state_dict_round_trip_includes_optimizers(tmp_path):
    torch.manual_seed(0)
    agent, config = tiny_agent()
    agent.train(tiny_batch(config), 0)
    tools.save_checkpoint(tmp_path / "a.pt", {"agent": agent.state_dict()})
    other, _ = tiny_agent()
    other.load_state_dict(tools.load_checkpoint(tmp_path / "a.pt")["agent"])
    assert other.updates == 1
    assert other.wm_opt.state_dict()["state"], "world-model optimizer state not restored"
    assert other.behavior.actor_opt.state_dict()["state"], "actor optimizer state not restored"
    # Same weights, same optimizer state, same RNG: the next update is identical.
    torch.manual_seed(5)
    m1 = agent.train(tiny_batch(config, 1), 1)
    torch.manual_seed(5)
    m2 = other.train(tiny_batch(config, 1), 1)
    assert m1 == m2



@pytest.mark.timeout_hint(40)
@pytest.mark.parametrize("when", ["evaluating", "recording"])
def test_a_stop_during_the_final_evaluation_evaluates_on_resuming_once(tmp_path, monkeypatch, when):
    """A real SIGINT while the last evaluation's episodes run (the env step counter already at `steps`), or while
    its row is being written: the run saves and exits 130; the rerun evaluates step 160 once and repeats nothing."""
    import os
    import signal

    import training.student as student

    real_evaluate, real_write = student.evaluate, tools.Logger.write
    calls = {"evaluate": 0, "sent": 0}

    def stop_once():
        if not calls["sent"]:
            calls["sent"] = 1
            os.kill(os.getpid(), signal.SIGINT)  # handled in the interpreter at the next bytecode, right here

    def evaluate(*args, **kwargs):
        episodes = real_evaluate(*args, **kwargs)
        calls["evaluate"] += 1
        if when == "evaluating" and calls["evaluate"] == 2:  # the evaluation at step 160
            stop_once()
        return episodes

    def write(self, step):
        if when == "recording" and step == 160 and "eval/episodes" in self._scalars:
            stop_once()  # held back until the row and its bookkeeping are written
        return real_write(self, step)

    def eval_rows():
        return [r["step"] for r in records(logdir) if "eval/success_any" in r]

    logdir = tmp_path / "run"
    monkeypatch.setattr(student, "evaluate", evaluate)
    monkeypatch.setattr(tools.Logger, "write", write)
    flags = ["--time_limit", "40", "--eval_every", "80", "--steps", "160", "--checkpoint_every", "1000"]
    assert run(logdir, *flags) == tools.EXIT_INTERRUPTED
    assert calls["sent"], "the stop was never sent"
    assert tools.load_checkpoint(logdir / "latest.pt")["step"] == 160
    assert eval_rows() == ([80] if when == "evaluating" else [80, 160]), eval_rows()
    assert run(logdir, *flags) == 0
    assert eval_rows() == [80, 160], eval_rows()
    saved = tools.load_checkpoint(logdir / "latest.pt")
    assert saved["last_eval"] == 160 and saved["evaluations"] == 2, saved
    assert len(replay.load_dir(logdir / "eval_eps")) == 2
