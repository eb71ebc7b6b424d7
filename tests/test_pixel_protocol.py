"""The CPU pixel protocol: its config block and the sweep spec of the pixel comparison fit together."""
import pathlib

import numpy as np
import torch

import configs
from sweeps import jobs, spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = "metaworld_pixel_cpu"
SPEC = ROOT / "sweeps" / "specs" / "pixel_methods.yaml"


def test_block_is_a_pixel_protocol_with_its_own_eval_size():
    block = configs.read_blocks()[BLOCK]
    # The evaluation size is part of the protocol: set here, not inherited from `defaults`.
    assert block["eval_episodes"] >= 10 and block["eval_every"] > 0
    config = configs.load_config(["--configs", "defaults", "metaworld", BLOCK])
    assert config.obs == "pixel" and list(config.size) == [64, 64], (config.obs, config.size)
    assert config.steps % config.eval_every == 0, "the last evaluation falls on the last step"


def test_block_builds_a_student_that_updates():
    from models.agent import Agent

    config = configs.load_config(["--configs", "defaults", "metaworld", BLOCK])
    torch.manual_seed(0)
    agent = Agent(config, None, 4, torch.device("cpu"))
    b, t = config.batch_size, config.batch_length
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (b, t, 64, 64, 3), dtype=np.uint8),
             "action": rng.uniform(-1, 1, (b, t, 4)).astype(np.float32),
             "reward": rng.uniform(0, 1, (b, t)).astype(np.float32), "discount": np.ones((b, t), np.float32),
             "is_first": np.zeros((b, t), bool), "is_terminal": np.zeros((b, t), bool)}
    batch["is_first"][:, 0] = True
    metrics = agent.train(batch, 0)
    assert torch.isfinite(metrics["model_loss"]), metrics


def test_pixel_spec_compares_methods_on_a_target_the_teachers_never_saw():
    loaded = spec.load(SPEC, ROOT)
    assert BLOCK in loaded.flags["configs"], loaded.flags
    assert loaded.collect_flags["obs"] == "pixel"
    assert not set(loaded.targets) & set(loaded.source_tasks), (loaded.targets, loaded.source_tasks)
    assert {m.name for m in loaded.methods} >= {"dreamer", "comet", "vid2act"}
    assert len(loaded.seeds) >= 5
    students = [j for j in jobs.build(loaded) if j.name.startswith("students/")]
    assert len(students) == len(loaded.seeds) * len(loaded.targets) * len(loaded.methods)
    for job in students:
        args = job.command[2:]
        config = configs.load_config(args)
        assert config.obs == "pixel" and config.task in loaded.targets, job.name
        assert config.eval_episodes == configs.read_blocks()[BLOCK]["eval_episodes"], job.name
