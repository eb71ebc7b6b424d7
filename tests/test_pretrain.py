"""Teacher pretraining end to end on a real collected 2-task pixel dataset (tiny config), resume,
input errors, task batching and PCGrad."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import dreamer_pretrain
import replay
from tools import UsageError
from training.gradients import cosine_matrix, pcgrad
from training.sources import TaskBatcher
from models import load_teacher

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = ["metaworld_reach", "metaworld_drawer_close"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return collect_sources(tmp_path_factory.mktemp("data"))


def collect_sources(out: pathlib.Path) -> list[pathlib.Path]:
    """Two real Meta-World pixel datasets from the scripted experts (2 short episodes each) under `out`."""
    subprocess.run([sys.executable, str(ROOT / "collect_data.py"), "--tasks", ",".join(TASKS), "--episodes", "2",
                    "--obs", "pixel", "--out", str(out), "--configs", "defaults", "metaworld", "debug",
                    "--workers", "1", "--progress", "False"], check=True, cwd=ROOT, capture_output=True)
    dirs = [out / "reach", out / "drawer_close"]
    assert all(replay.episode_files(d) for d in dirs)
    return dirs


def args(logdir, dirs, *extra):
    return ["--configs", "defaults", "metaworld", "debug", "--source_tasks", ",".join(TASKS),
            "--source_task_dirs", ",".join(map(str, dirs)), "--logdir", str(logdir), "--progress", "False",
            "--log_every", "2", "--checkpoint_every", "2", *extra]


def records(logdir):
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "event" not in r], [r for r in lines if "event" in r]


def test_pretrain_end_to_end_and_resume(tmp_path, sources):
    logdir = tmp_path / "teacher"
    assert dreamer_pretrain.main(args(logdir, sources, "--pretrain_iterations", "4")) == 0
    assert (logdir / "teacher.pt").is_file() and (logdir / "config.yaml").is_file()
    assert list(logdir.glob("events.out.tfevents.*"))
    scalars, _ = records(logdir)
    assert [r["step"] for r in scalars] == [2, 4]
    last = scalars[-1]
    for task in TASKS:
        for name in ("loss", "image", "reward", "kl_value"):
            assert np.isfinite(last[f"train/{name}/{task}"])
        assert abs(sum(last[f"gate/{task}/expert{i}"] for i in range(2)) - 1) < 1e-5
    assert last["experts/cos"] < 1e-3 and "experts/cos_raw" in last
    assert -1 <= last[f"grad_cos/{TASKS[0]}|{TASKS[1]}"] <= 1
    assert last["train/updates_per_sec"] > 0

    model, meta = load_teacher(logdir / "teacher.pt")
    assert meta["step"] == 4 and meta["source_tasks"] == TASKS and meta["encoder_mode"] == "moe"
    assert meta["moe_temperature"] == 2.0 and meta["config"]["source_task_dirs"] == [str(d) for d in sources]

    # Same logdir, more iterations: continues from update 4 with the optimizer state restored.
    assert dreamer_pretrain.main(args(logdir, sources, "--pretrain_iterations", "6")) == 0
    scalars, events = records(logdir)
    assert [r["step"] for r in scalars] == [2, 4, 6]
    assert events[-2]["event"] == "pretrain_start" and events[-2]["step"] == 4
    payload = torch.load(logdir / "teacher.pt", weights_only=True)
    assert payload["step"] == 6
    assert all(int(s["step"]) == 6 for s in payload["optimizer"]["state"].values())

    # A changed architecture cannot resume; the error names the key.
    with pytest.raises(UsageError, match="dyn_deter"):
        dreamer_pretrain.run(args(logdir, sources, "--pretrain_iterations", "8", "--dyn_deter", "20"))
    with pytest.raises(UsageError, match="source_tasks"):
        dreamer_pretrain.run(args(logdir, sources[::-1], "--pretrain_iterations", "8",
                                   "--source_tasks", ",".join(TASKS[::-1])))
    with pytest.raises(UsageError, match="--resume True"):
        dreamer_pretrain.run(args(logdir, sources, "--resume", "False"))


def test_pretrain_pcgrad_round_robin_label_cnn(tmp_path, sources):
    logdir = tmp_path / "pcgrad"
    assert dreamer_pretrain.main(args(logdir, sources, "--pretrain_iterations", "2", "--grad_surgery", "pcgrad")) == 0
    scalars, _ = records(logdir)
    assert 0 <= scalars[-1]["train/pcgrad_conflicts"] <= 1
    logdir = tmp_path / "label"
    assert dreamer_pretrain.main(args(logdir, sources, "--pretrain_iterations", "2", "--task_batching", "round_robin",
                                      "--teacher_encoder_mode", "label_cnn")) == 0
    _, meta = load_teacher(logdir / "teacher.pt")
    assert meta["encoder_mode"] == "label_cnn"
    with pytest.raises(UsageError, match="mixed"):
        dreamer_pretrain.run(args(tmp_path / "x", sources, "--grad_surgery", "pcgrad", "--task_batching", "round_robin"))


def test_per_task_metrics_average_over_the_updates_that_held_the_task(tmp_path, sources):
    logdir = tmp_path / "robin"
    assert dreamer_pretrain.main(args(logdir, sources, "--pretrain_iterations", "2", "--task_batching", "round_robin")) == 0
    row = records(logdir)[0][-1]  # one reach-only and one drawer-close-only update in the window
    per_task = sum(row[f"train/loss/{task}"] for task in TASKS)
    assert per_task == pytest.approx(2 * row["train/model_loss"], rel=1e-5), (per_task, row["train/model_loss"])


def test_pretrain_input_errors(tmp_path, sources):
    with pytest.raises(UsageError, match="1 folders but source_tasks has 2"):
        dreamer_pretrain.run(args(tmp_path / "a", sources[:1]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no episode files"):
        dreamer_pretrain.run(args(tmp_path / "b", [sources[0], empty]))
    with pytest.raises(UsageError, match="not found"):
        dreamer_pretrain.run(args(tmp_path / "c", [sources[0], tmp_path / "missing"]))
    with pytest.raises(UsageError, match="batch_length 500"):
        dreamer_pretrain.run(args(tmp_path / "d", sources, "--batch_length", "500"))


def test_pretrain_nan_loss_is_an_error(tmp_path, sources):
    # NaN data is caught when the episodes are read, naming the file; a diverging update is still an error.
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in replay.episode_files(sources[1]):
        episode = replay.load_episode(path)
        episode["reward"][:] = np.nan
        np.savez_compressed(bad / path.name, **episode)
    with pytest.raises(UsageError, match="'reward' holds NaN or inf"):
        dreamer_pretrain.run(args(tmp_path / "nan", [sources[0], bad]))
    with pytest.raises(FloatingPointError, match="non-finite"):
        dreamer_pretrain.run(args(tmp_path / "diverged", sources, "--model_lr", "1e30", "--model_grad_clip", "1e30"))


def test_task_batching_balance():
    episodes = [{"e": {"action": np.zeros((10, 4), np.float32), "reward": np.zeros(10, np.float32),
                       "discount": np.ones(10, np.float32), "success": np.zeros(10, np.float32),
                       "is_first": np.arange(10) == 0, "is_terminal": np.zeros(10, bool),
                       "state": np.zeros((10, 39), np.float32)}} for _ in range(3)]
    keys = ["state", "action", "reward", "discount", "is_first"]
    mixed = TaskBatcher(episodes, 8, 5, 0, "mixed", keys)
    totals = np.zeros(3)
    for step in range(3):
        counts = mixed.counts(step)
        assert sum(counts) == 8 and max(counts) - min(counts) <= 1
        totals += counts
        b = mixed.sample(step)
        assert b["state"].shape == (8, 5, 39) and np.bincount(b["task"], minlength=3).tolist() == counts
    assert totals.tolist() == [8, 8, 8]  # the remainder rotates over the tasks
    robin = TaskBatcher(episodes, 8, 5, 0, "round_robin", keys)
    assert [int(robin.sample(s)["task"][0]) for s in range(4)] == [0, 1, 2, 0]


def test_pcgrad_projection():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])
    combined, conflicts = pcgrad(grads, torch.Generator().manual_seed(0))
    # Task 0 conflicts with task 1 (and vice versa); both get projected onto each other's normal plane.
    assert float(conflicts) == pytest.approx(2 / 6)
    torch.testing.assert_close(combined, torch.tensor([0.5, 0.5]) + torch.tensor([0.0, 1.0]) + grads[2])
    cos = cosine_matrix(grads)
    assert cos.shape == (3, 3) and torch.allclose(cos.diagonal(), torch.ones(3))
