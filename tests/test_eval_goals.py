"""The fixed evaluation goal set: evaluation i starts from the same positions in every run, seed and env count."""
import numpy as np
import pytest

import configs
import dreamer_distill
import envs
import replay
from training.evaluation import evaluate, goal_seeds

STATE = configs.load_config(["--obs", "state", "--time_limit", "6", "--action_repeat", "2"])


class StillAgent:
    """The smallest agent `evaluate` accepts: a zero action, so that an episode's first state is the reset's."""
    act_dim = envs.ACTION_DIM

    def policy(self, obs, state, training=False):
        return np.zeros((len(obs["is_first"]), self.act_dim), np.float32), state


def starts(seed: int, n: int, episodes: int, goals) -> np.ndarray:
    """(episodes, 39) first states of `episodes` evaluation episodes of reach on a VecEnv of `n` envs."""
    with envs.VecEnv(STATE, "metaworld_reach", n, seed=seed) as vec:
        vec.reset()  # a history before the evaluation, which a fixed goal set must not depend on
        eps = evaluate(StillAgent(), vec, episodes, ("state",), goals=goals)
    return np.stack([ep["state"][0] for ep in eps])


def test_goal_seeds_are_a_pure_function_of_goal_seed_index_and_episode():
    assert goal_seeds(0, 3, 5) == goal_seeds(0, 3, 5)
    assert goal_seeds(0, 3, 8)[:5] == goal_seeds(0, 3, 5)  # more episodes: the same list, longer
    assert goal_seeds(0, 3, 5) != goal_seeds(0, 4, 5) and goal_seeds(0, 3, 5) != goal_seeds(1, 3, 5)
    assert len(set(goal_seeds(0, 0, 50))) == 50


@pytest.mark.timeout_hint(30)
def test_evaluation_i_sees_the_same_positions_whatever_the_run_seed_and_env_count():
    fixed = [starts(seed, n, 3, goals=(7, 2)) for seed, n in ((0, 1), (11, 1), (5, 2))]
    for other in fixed[1:]:
        np.testing.assert_array_equal(fixed[0], other)
    # positions differ between the episodes of one evaluation and between evaluations
    assert not np.array_equal(fixed[0][0], fixed[0][1])
    assert not np.array_equal(fixed[0], starts(0, 1, 3, goals=(7, 3)))
    # without the goal set, runs of different seeds see different positions (what the fixed set removes)
    assert not np.array_equal(starts(0, 1, 3, goals=None), starts(11, 1, 3, goals=None))


def eval_starts(logdir) -> list[np.ndarray]:
    return [ep["state"][0] for ep in replay.load_dir(logdir / "eval_eps").values()]


@pytest.mark.slow
def test_students_of_different_seeds_and_methods_evaluate_on_the_same_goals(tmp_path):
    tiny = ["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--task", "metaworld_reach",
            "--device", "cpu", "--progress", "False", "--threads", "1", "--eval_episodes", "2"]
    runs = {"a": ["--seed", "0"], "b": ["--seed", "5", "--expl_noise", "0.3"], "own": ["--seed", "5",
                                                                                         "--eval_goals", "run"]}
    for name, flags in runs.items():
        assert dreamer_distill.main([*tiny, "--logdir", str(tmp_path / name), *flags]) == 0
    a, b, own = (eval_starts(tmp_path / name) for name in runs)
    assert len(a) == 4, len(a)  # 2 evaluations x 2 episodes
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[2])  # evaluation 1 has its own list
    assert not all(np.array_equal(x, y) for x, y in zip(a, own))


def test_a_bad_goal_rule_is_one_line(tmp_path, capsys):
    code = dreamer_distill.main(["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--logdir",
                                 str(tmp_path / "r"), "--eval_goals", "same", "--progress", "False"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--eval_goals" in err and "fixed" in err, err
