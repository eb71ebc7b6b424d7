"""Meta-World env, wrappers and VecEnv: the step-dict contract on the real simulator and renderer."""
import os
import signal
import time

import numpy as np
import pytest

import envs
import configs
from envs.wrappers import ActionRepeat, TimeLimit

TASK = "metaworld_drawer_close"
STEP_KEYS = {"reward", "discount", "success", "is_first", "is_last", "is_terminal"}


def config(*flags):
    return configs.load_config(list(flags))


def run(env, actions):
    return [env.step(a) for a in actions]


# --- single env ----------------------------------------------------------------------------------------

def test_reset_and_step_contract_both():
    env = envs.make_env(config("--obs", "both", "--time_limit", "20"), TASK, seed=0)
    try:
        first = env.reset()
        assert set(first) == STEP_KEYS | {"image", "state"}
        assert first["image"].shape == (64, 64, 3) and first["image"].dtype == np.uint8
        assert first["state"].shape == (39,) and first["state"].dtype == np.float32
        for key in ("reward", "discount", "success"):
            assert np.asarray(first[key]).dtype == np.float32, key
        assert first["is_first"] and not first["is_last"] and not first["is_terminal"]
        assert first["reward"] == 0 and first["discount"] == 1
        steps = run(env, np.zeros((10, 4), np.float32))
        assert [s["is_last"] for s in steps] == [False] * 9 + [True]  # 20 env steps / action repeat 2
        for step in steps:
            assert set(step) == STEP_KEYS | {"image", "state"}
            assert not step["is_first"] and not step["is_terminal"] and step["discount"] == 1
            assert step["success"] in (0.0, 1.0)
        assert env.stats["length"] == 10
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(np.zeros(4))
    finally:
        env.close()


def test_state_episode_length_and_keys():
    env = envs.make_env(config("--obs", "state"), TASK, seed=0)
    step, count = env.reset(), 0
    assert set(step) == STEP_KEYS | {"state"}
    while not step["is_last"]:
        step = env.step(np.random.default_rng(count).uniform(-1, 1, 4))
        count += 1
    assert count == 150  # time_limit 300 env steps, action_repeat 2
    env.close()


def test_actions_are_clipped_and_validated():
    cfg = config("--obs", "state", "--time_limit", "20")
    a, b = envs.make_env(cfg, TASK, seed=1), envs.make_env(cfg, TASK, seed=1)
    a.reset(), b.reset()
    big = np.array([5.0, -7.0, 3.0, -2.0])
    for _ in range(5):
        sa, sb = a.step(big), b.step(np.clip(big, -1, 1))
    np.testing.assert_array_equal(sa["state"], sb["state"])
    assert a.action_space.low.min() == -1 and a.action_space.high.max() == 1
    with pytest.raises(ValueError, match="shape"):
        a.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        a.step(np.array([np.nan, 0, 0, 0]))


@pytest.mark.filterwarnings("ignore:Constant")
def test_success_reported_by_expert():
    from collection.experts import expert_policy

    env = envs.make_env(config("--obs", "state"), TASK, seed=0)
    policy = expert_policy(envs.env_name(TASK))
    step, successes = env.reset(), []
    while not step["is_last"]:
        step = env.step(np.clip(policy.get_action(step["state"].astype(np.float64)), -1, 1))
        successes.append(float(step["success"]))
    assert set(successes) <= {0.0, 1.0}
    assert max(successes) == 1.0 and env.stats["success_any"] == 1.0


def test_pixels_upright_and_not_blank():
    env = envs.make_env(config("--obs", "pixel"), TASK, seed=0)
    image = env.reset()["image"].astype(np.float32)
    assert image.std() > 20, "frame looks blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
    # Upright: the camera's image-up axis points up in the world; the background above the table is
    # brighter than the table's dark front edge at the bottom of the frame.
    assert env.camera_up()[2] > 0
    assert image[:8].mean() > image[-8:].mean() + 20
    env.close()


def test_render_fast_changes_only_lighting():
    cfg_fast, cfg_slow = config("--render_fast", "True"), config("--render_fast", "False")
    fast, slow = envs.make_env(cfg_fast, TASK, 0), envs.make_env(cfg_slow, TASK, 0)
    a, b = fast.reset()["image"].astype(float), slow.reset()["image"].astype(float)
    assert 0 < np.abs(a - b).mean() < 30  # same scene, no shadows/reflections
    fast.close(), slow.close()


def test_positions_rerandomised_every_reset():
    env = envs.make_env(config("--obs", "state"), "metaworld_reach", seed=0)
    vectors, states = [], []
    for _ in range(4):
        states.append(env.reset()["state"])
        vectors.append(env.task_vector)
    for i in range(4):
        for j in range(i):
            assert not np.allclose(vectors[i], vectors[j]), "positions repeated across resets"
            assert not np.allclose(states[i][36:39], states[j][36:39]), "goal repeated across resets"
    env.close()


def test_same_seed_same_episode():
    cfg = config("--obs", "both", "--time_limit", "16")
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 4))
    a, b = envs.make_env(cfg, TASK, seed=5), envs.make_env(cfg, TASK, seed=5)
    first_a, first_b = a.reset(), b.reset()
    for key in ("image", "state"):
        np.testing.assert_array_equal(first_a[key], first_b[key])
    for sa, sb in zip(run(a, actions), run(b, actions)):
        for key in ("image", "state", "reward", "success"):
            np.testing.assert_array_equal(sa[key], sb[key])
    # reset(seed=...) reproduces an episode whatever the env did before.
    a.reset(), run(a, actions[:3])
    again = a.reset(seed=11)
    fresh = envs.make_env(cfg, TASK, seed=0).reset(seed=11)
    np.testing.assert_array_equal(again["state"], fresh["state"])
    np.testing.assert_array_equal(again["image"], fresh["image"])
    other = envs.make_env(cfg, TASK, seed=6).reset()
    assert not np.allclose(other["state"], first_a["state"])


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        envs.make_env(config(), "metaworld_coffe_push", 0)
    message = str(err.value)
    assert "metaworld_coffe_push" in message and "metaworld_coffee_push" in message
    assert envs.env_name("metaworld_coffee_push") == "coffee-push-v3"
    assert envs.short_name("metaworld_coffee_push") == "coffee_push"
    assert len(envs.valid_tasks()) == 50


# --- wrappers on a scripted fake env (exact arithmetic) -----------------------------------------------

class FakeEnv:
    """Rewards 1, 2, 3, ...; success only on env steps listed in `wins`; records which steps observed."""

    name = "fake"
    obs_space = {"state": None}

    def __init__(self, wins=()):
        self.wins, self.t, self.observed = set(wins), 0, []

    def reset(self, seed=None):
        self.t = 0
        return {"state": np.zeros(1), "reward": 0.0, "discount": 1.0, "success": 0.0, "is_first": True,
                "is_last": False, "is_terminal": False}

    def step(self, action, observe=True):
        self.t += 1
        self.observed.append(observe)
        step = {"reward": float(self.t), "discount": 1.0, "success": float(self.t in self.wins),
                "is_first": False, "is_last": False, "is_terminal": False}
        if observe:
            step["state"] = np.full(1, self.t)
        return step


def test_action_repeat_sums_reward_and_any_success():
    inner = FakeEnv(wins={1})
    env = ActionRepeat(TimeLimit(inner, 5), 2)
    env.reset()
    first = env.step(np.zeros(4))
    assert first["reward"] == 1 + 2 and first["success"] == 1.0  # success in the first repeat counts
    assert inner.observed == [False, True]  # only the last repeat renders
    second = env.step(np.zeros(4))
    assert second["reward"] == 3 + 4 and second["success"] == 0.0 and not second["is_last"]
    third = env.step(np.zeros(4))  # time limit 5 env steps cuts the repeat short
    assert third["reward"] == 5 and third["is_last"] and "state" in third


# --- VecEnv ---------------------------------------------------------------------------------------------

def test_vecenv_matches_serial_envs():
    cfg = config("--obs", "both", "--time_limit", "12")
    actions = np.random.default_rng(1).uniform(-1, 1, (6, 2, 4)).astype(np.float32)
    serial = [envs.make_env(cfg, TASK, seed=3, index=i) for i in range(2)]
    expected = [[env.reset()] + [env.step(a[i]) for a in actions] for i, env in enumerate(serial)]
    with envs.VecEnv(cfg, TASK, n=2, seed=3) as vec:
        got = [vec.reset()] + [vec.step(a) for a in actions]
        assert got[-1]["is_last"].tolist() == [True, True]
        again = vec.reset([1])
        assert again["image"].shape == (1, 64, 64, 3) and again["is_first"].tolist() == [True]
    for t, stacked in enumerate(got):
        for i in range(2):
            for key in ("image", "state", "reward", "success", "is_first", "is_last"):
                np.testing.assert_array_equal(stacked[key][i], expected[i][t][key], err_msg=f"{key} t={t} env {i}")
    assert got[0]["image"].shape == (2, 64, 64, 3) and got[0]["state"].dtype == np.float32
    assert got[1]["reward"].shape == (2,) and got[1]["is_last"].dtype == bool


def test_vecenv_single_env_in_process():
    cfg = config("--obs", "state", "--time_limit", "4")
    with envs.VecEnv(cfg, TASK, n=1, seed=0) as vec:
        assert vec.pids == []
        out = vec.reset()
        assert out["state"].shape == (1, 39)
        vec.step(np.zeros((1, 4)))
        vec.step(np.zeros((1, 4)))
        with pytest.raises(envs.EnvWorkerError, match=rf"worker 0 of task '{TASK}'.*episode is over"):
            vec.step(np.zeros((1, 4)))
        with pytest.raises(ValueError, match="shape"):
            vec.step(np.zeros((2, 4)))


def test_vecenv_worker_error_names_task_and_worker():
    cfg = config("--obs", "state", "--time_limit", "4")
    with envs.VecEnv(cfg, TASK, n=2, seed=0) as vec:
        vec.reset([0])  # env 1 never reset: stepping it is an error inside worker 1
        with pytest.raises(envs.EnvWorkerError, match=rf"worker 1 of task '{TASK}' raised RuntimeError.*call reset"):
            vec.step(np.zeros((2, 4)))
        # The workers are alive and in sync: after resetting, stepping works again.
        vec.reset()
        assert vec.step(np.zeros((2, 4)))["state"].shape == (2, 39)


def test_vecenv_dead_worker_raises_quickly():
    cfg = config("--obs", "state")
    vec = envs.VecEnv(cfg, TASK, n=2, seed=0, timeout=30)
    vec.reset()
    os.kill(vec.pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(envs.EnvWorkerError, match=rf"worker 1 of task '{TASK}' died.*SIGKILL"):
        vec.step(np.zeros((2, 4)))
    assert time.monotonic() - start < 10
    with pytest.raises(envs.EnvWorkerError, match="closed"):
        vec.step(np.zeros((2, 4)))
    vec.close()


def test_vecenv_stuck_worker_times_out():
    cfg = config("--obs", "state")
    vec = envs.VecEnv(cfg, TASK, n=2, seed=0, timeout=2)
    vec.reset()
    os.kill(vec.pids[0], signal.SIGSTOP)  # alive but never answers
    start = time.monotonic()
    with pytest.raises(envs.EnvWorkerError, match=rf"worker 0 of task '{TASK}' did not answer within 2 s"):
        vec.step(np.zeros((2, 4)))
    assert time.monotonic() - start < 15
    vec.close()
    assert not any(p.is_alive() for p in vec._procs)
