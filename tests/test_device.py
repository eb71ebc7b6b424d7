"""The device-sensitive paths on the run's `--device` (cpu by default; `pytest -m device --device cuda` on a
GPU, as bench/gpu_check.sh does): teacher, plain and distilling student updates, one policy step,
checkpoints written on the device and read on the CPU, bf16 autocast and torch.compile (CUDA only), and the
pixel pipeline collect -> pretrain -> distill -> OOD through the stage entry points, rendering with EGL.

Tiny sizes (`debug` block) on 64x64 pixels. Shape legend: B batch, T time, A action size.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest
import torch

import tools
import configs
from envs import short_name
from models.agent import Agent
from bench import distill_step, teacher_step
from models import TeacherWorldModel, compile_model

pytestmark = pytest.mark.device
A = 4
SOURCES = ["metaworld_reach", "metaworld_drawer_close"]


def pixel_config(device, *extra: str, precision: int = 32):
    return configs.load_config(["--configs", "defaults", "metaworld", "debug", "--device", str(device),
                              "--precision", str(precision), *extra])


def on(device: torch.device, tensor: torch.Tensor) -> bool:
    return tensor.device.type == device.type


def teacher_loss(device, precision: int = 32, compile_: bool = False, seed: int = 0):
    """(loss tensor, model) of one teacher update's loss on a fixed random mixed-task batch."""
    config = pixel_config(device, "--source_tasks", ",".join(SOURCES), precision=precision)
    torch.manual_seed(seed)
    model = TeacherWorldModel(config, A).to(device)
    if compile_:
        compile_model(model)
    batch = teacher_step.make_batch(config.batch_size, config.batch_length, len(SOURCES), np.random.default_rng(0))
    loss, _, _ = model.loss(model.preprocess(batch))
    return loss, model


def test_teacher_update_runs_on_the_device(device):
    loss, model = teacher_loss(device)
    assert on(device, loss) and torch.isfinite(loss), loss
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(on(device, g) and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert moved > len(before) // 2, f"only {moved} of {len(before)} parameters changed"


@pytest.mark.parametrize("k", [None, 2], ids=["plain", "distill_k2"])
def test_student_update_and_policy_step_run_on_the_device(device, k):
    config = pixel_config(device)
    agent, _ = distill_step.build(config, k, None, device, seed=0)
    assert all(on(device, p) for p in agent.wm.parameters())
    batch = distill_step.make_batch(config, np.random.default_rng(0))
    metrics = agent.train(batch, 0)
    assert metrics["model_skipped"] == 0.0, metrics
    assert all(math.isfinite(float(v)) for v in metrics.values() if np.ndim(v) == 0), metrics
    if k:
        assert any(key.startswith("distill") for key in metrics), sorted(metrics)
    obs = {"image": np.zeros((2, 64, 64, 3), np.uint8), "is_first": np.array([True, True])}
    action, state = agent.policy(obs, None, training=True)
    assert action.shape == (2, A) and action.dtype == np.float32 and np.isfinite(action).all()
    assert on(device, state[0]["deter"]), state[0]["deter"].device


def test_checkpoint_written_on_the_device_loads_on_the_cpu(device, tmp_path):
    config = pixel_config(device)
    agent, _ = distill_step.build(config, None, None, device, seed=0)
    agent.train(distill_step.make_batch(config, np.random.default_rng(0)), 0)
    tools.save_checkpoint(tmp_path / "latest.pt", {"agent": agent.state_dict()})
    payload = tools.load_checkpoint(tmp_path / "latest.pt", "cpu")
    cpu_agent = Agent({**config, "device": "cpu"}, None, A, "cpu")
    cpu_agent.load_state_dict(payload["agent"])
    for (name, a), b in zip(agent.wm.state_dict().items(), cpu_agent.wm.state_dict().values()):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b), name


def test_bf16_autocast_and_compile_agree_with_float32(cuda_device):
    reference, _ = teacher_loss(cuda_device)
    for precision, compile_ in ((16, False), (16, True)):
        loss, model = teacher_loss(cuda_device, precision, compile_)
        assert torch.isfinite(loss), (precision, compile_, loss)
        # bf16 keeps ~3 significant digits; at initialisation the loss is dominated by the image term.
        assert abs(loss.item() - reference.item()) <= 0.05 * abs(reference.item()), (loss.item(), reference.item())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    config = pixel_config(cuda_device, precision=16)
    agent, _ = distill_step.build(config, 2, None, cuda_device, seed=0)
    compile_model(agent.wm)
    compile_model(agent.distiller.teacher)
    metrics = agent.train(distill_step.make_batch(config, np.random.default_rng(0)), 0)
    assert metrics["model_skipped"] == 0.0, metrics


@pytest.mark.slow
@pytest.mark.timeout_hint(120)
def test_pixel_pipeline_collect_pretrain_distill_ood(device, tmp_path):
    import collect_data
    import dreamer_distill
    import dreamer_pretrain
    import ood_detection

    data, teacher, student, ood = (tmp_path / n for n in ("data", "teacher", "student", "ood"))
    dirs = ",".join(str(data / short_name(t)) for t in SOURCES)
    precision = "16" if device.type == "cuda" else "32"
    common = ["--configs", "defaults", "metaworld", "debug", "--source_tasks", ",".join(SOURCES),
              "--source_task_dirs", dirs, "--device", str(device), "--precision", precision, "--progress", "False"]
    collect_data.main(["--tasks", ",".join(SOURCES), "--episodes", "3", "--obs", "pixel", "--workers", "1",
                       "--out", str(data), "--configs", "defaults", "metaworld", "debug", "--progress", "False"])
    for folder in dirs.split(","):
        assert len(list(pathlib.Path(folder).glob("*.npz"))) == 3, sorted(os.listdir(folder))
    if device.type == "cuda":
        assert os.environ["MUJOCO_GL"] == "egl", "frames were not rendered with EGL on the GPU machine"
    assert dreamer_pretrain.main([*common, "--logdir", str(teacher)]) == 0
    assert dreamer_distill.main([*common, "--logdir", str(student), "--task", "metaworld_drawer_open",
                                 "--use_distill", "True", "--teacher_model_path", str(teacher / "teacher.pt")]) == 0
    rows = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    losses = [(row["train/model_loss"], row["train/distill/loss"]) for row in rows if "train/distill/loss" in row]
    assert losses and np.isfinite(losses).all(), losses
    assert ood_detection.main([*common, "--teacher_model_path", str(teacher / "teacher.pt"), "--source_dir", dirs,
                               "--student_dir", str(student / "train_eps"), "--out", str(ood)]) == 0
    report = json.loads((ood / "ood_report.json").read_text())
    assert report and (ood / "ood_episodes.csv").is_file(), sorted(os.listdir(ood))


def cuda_episodes(n: int, length: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ep = {"image": rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
              "action": rng.uniform(-1, 1, (length, A)).astype(np.float32),
              "reward": rng.normal(size=length).astype(np.float32), "discount": np.ones(length, np.float32),
              "success": np.zeros(length, np.float32), "is_first": np.arange(length) == 0,
              "is_terminal": np.zeros(length, bool)}
        out.append(ep)
    return out


def test_pinned_replay_batches_feed_cuda_updates_unchanged(cuda_device):
    import replay
    from replay.pinned import PinnedBatches

    config = pixel_config(cuda_device)
    episodes = cuda_episodes(3, 30)
    plain, staged = (replay.Replay(episodes, config.batch_size, config.batch_length, seed=2) for _ in range(2))
    batches = PinnedBatches(cuda_device)
    agent, _ = distill_step.build(config, None, None, cuda_device, seed=0)
    for i in range(4):  # two slots, each refilled twice
        got, want = batches.sample(staged), plain.sample()
        assert all(v.is_pinned() and np.array_equal(v.numpy(), want[k]) for k, v in got.items())
        assert agent.train(got, i)["model_skipped"] == 0.0


def pinned_source(device, config):
    """Pinned replay batches of random pixel episodes, one per call."""
    import replay
    from replay.pinned import PinnedBatches

    buffer = replay.Replay(cuda_episodes(2, 30), config.batch_size, config.batch_length, seed=0)
    batches = PinnedBatches(device)
    return lambda: batches.sample(buffer)


@pytest.mark.parametrize("k", [None, 2], ids=["plain", "distill_k2"])
def test_updates_do_not_synchronize_on_cuda(cuda_device, k):
    """CUDA's own sync detector (`set_sync_debug_mode("error")`) over updates after the first (which fills
    caches and optimizer states): any host wait on the GPU in an update raises."""
    from models.metrics import Window

    config = pixel_config(cuda_device)
    agent, _ = distill_step.build(config, k, None, cuda_device, seed=0)
    batches = pinned_source(cuda_device, config)
    window = Window()
    window.add(agent.train(batches(), 0))
    torch.cuda.synchronize(cuda_device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 3):
            window.add(agent.train(batches(), i))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    means, _ = window.read()
    assert means["model_skipped"] == 0.0 and math.isfinite(means["model_loss"]), means


def test_teacher_update_does_not_synchronize_on_cuda(cuda_device):
    from bench.host_syncs import teacher_stage

    update, log = teacher_stage(cuda_device)
    update()
    torch.cuda.synchronize(cuda_device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        update()
        update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    log()
