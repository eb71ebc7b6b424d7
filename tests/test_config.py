"""Config blocks, typed flags, errors that name the closest key, schedules."""

import pytest

import configs
import tools


def test_blocks_merge_left_to_right():
    config = configs.load_config(["--configs", "defaults", "metaworld", "metaworld_state"])
    assert config.obs == "state"  # metaworld says pixel, metaworld_state overrides it
    assert config.action_repeat == 2
    assert config.configs == ["defaults", "metaworld", "metaworld_state"]


def test_defaults_block_is_implicit():
    config = configs.load_config(["--configs", "metaworld_state"])
    assert config.configs[0] == "defaults" and config.seed == 0


@pytest.mark.parametrize("flag,text,expected", [
    ("steps", "1e5", 100000),
    ("steps", "2500", 2500),
    ("model_lr", "3e-4", 3e-4),
    ("use_distill", "True", True),
    ("use_distill", "false", False),
    ("size", "32,48", [32, 48]),
    ("camera_pos", "1,0.5,2", [1.0, 0.5, 2.0]),
    ("source_tasks", "metaworld_reach,metaworld_push", ["metaworld_reach", "metaworld_push"]),
    ("distill_weight", "linear(1,0,1e5)", "linear(1,0,1e5)"),
])
def test_flags_are_typed_from_defaults(flag, text, expected):
    config = configs.load_config([f"--{flag}", text])
    assert config[flag] == expected and type(config[flag]) is type(expected)


def test_unknown_flag_names_closest_key():
    with pytest.raises(configs.ConfigError, match="did you mean '--batch_size'"):
        configs.load_config(["--batch_sise", "3"])


def test_a_renamed_flag_still_works_with_one_deprecation_line(capsys):
    for argv in (["--pretrain", "7"], ["--pretrain=7"]):
        config = configs.load_config(argv)
        assert config.prefill_updates == 7 and "pretrain" not in config
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["warning: --pretrain is deprecated and will be removed; use --prefill_updates"], err
    for old, new in configs.RENAMED.items():  # every alias points at a key that exists, and shadows none
        assert new in configs.read_blocks()["defaults"] and old not in configs.read_blocks()["defaults"], (old, new)


def test_unknown_block_names_closest_block():
    with pytest.raises(configs.ConfigError, match="did you mean 'metaworld_state'"):
        configs.load_config(["--configs", "defaults", "metaworld_stat"])


def test_bad_values_are_errors():
    with pytest.raises(configs.ConfigError, match="--steps"):
        configs.load_config(["--steps", "1.5"])
    with pytest.raises(configs.ConfigError, match="--use_distill"):
        configs.load_config(["--use_distill", "maybe"])


def test_block_with_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text("defaults:\n  seed: 0\nmine:\n  sede: 1\n")
    with pytest.raises(configs.ConfigError, match="did you mean 'seed'"):
        configs.load_config(["--configs", "defaults", "mine"], path=path)


def test_every_block_uses_known_keys():
    blocks = configs.read_blocks()
    for name in blocks:
        configs.load_config(["--configs", "defaults", name])


def test_schedules():
    assert configs.schedule("0.5")(123) == 0.5
    assert configs.schedule(2)(0) == 2.0
    linear = configs.schedule("linear(1,0,1e5)")
    assert linear(0) == 1.0 and linear(5e4) == pytest.approx(0.5) and linear(1e6) == 0.0
    warmup = configs.schedule("warmup(100,2)")
    assert warmup(0) == 0.0 and warmup(50) == pytest.approx(1.0) and warmup(1000) == 2.0
    with pytest.raises(configs.ConfigError, match="cannot parse schedule"):
        configs.schedule("cosine(1,2)")


def test_save_config_round_trip(tmp_path):
    config = configs.load_config(["--configs", "defaults", "metaworld_state", "--seed", "7"])
    path = configs.save_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    back = configs.read_blocks(path)
    assert back["seed"] == 7 and back["obs"] == "state" and back["size"] == [64, 64]


def test_cuda_request_without_cuda_is_an_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(tools.UsageError, match="CUDA is not available"):
        tools.get_device("cuda:0")


def test_the_config_history_names_the_commit_each_stretch_of_a_run_ran_on(tmp_path, monkeypatch):
    import pathlib
    import subprocess

    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=pathlib.Path(configs.__file__).parent)
    head = git.stdout.strip() if git.returncode == 0 else ""
    config = configs.load_config(["--configs", "metaworld_state"])
    configs.record_config(config, tmp_path)
    here = tools.code_commit()
    assert here in ((head, head + "-dirty") if head else ("unknown",)), (here, head)
    configs.record_config(config, tmp_path, step=100)  # resumed on the same code: no new line
    assert configs.run_commits(tmp_path) == [here]
    monkeypatch.setattr(tools, "code_commit", lambda: "f" * 40)  # resumed on another checkout
    configs.record_config(config, tmp_path, step=200)
    assert configs.run_commits(tmp_path) == [here, "f" * 40]
    assert configs.run_commits(tmp_path / "absent") == ["unrecorded"]
