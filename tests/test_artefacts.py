"""Trained students as artefacts: evaluate.py, quantize.py variants, the exported acting policy.

One tiny student (debug sizes, real reach env) is trained once for the module; everything else reads its
latest.pt, the real files the scripts write and the real env.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tools
import dreamer_distill
from artefacts import cli as artefacts_cli
import configs
from artefacts import evaluation, export, measure, student, variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--task", "metaworld_reach",
        "--device", "cpu", "--progress", "False", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(latest.pt of a tiny trained student, its payload, its agent, recorded inputs of one eval episode)."""
    logdir = tmp_path_factory.mktemp("student")
    assert dreamer_distill.main([*TINY, "--logdir", str(logdir)]) == 0
    path = logdir / "latest.pt"
    payload = student.read(path)
    agent = student.build_agent(payload)
    eps, _, _ = evaluation.run(payload, 1, seed=3)
    return path, payload, agent, measure.recorded_inputs(eps, agent.wm.obs_keys)


@pytest.mark.slow
def test_evaluate_same_seed_gives_identical_json_csv_videos_and_tensorboard(trained, tmp_path, capsys):
    import imageio_ffmpeg

    path = trained[0]
    outs = [tmp_path / "a", tmp_path / "b"]
    common = ["--checkpoint", str(path), "--episodes", "3", "--seed", "5", "--envs", "2"]
    assert artefacts_cli.main(["evaluate", *common, "--out", str(outs[0]), "--logdir", str(tmp_path / "tb"), "--video_episodes", "3"]) == 0
    assert artefacts_cli.main(["evaluate", *common, "--out", str(outs[1]), "--video_episodes", "0"]) == 0
    a, b = ((o / "summary.json").read_text() for o in outs)
    assert a == b
    summary = json.loads(a)
    assert summary["protocol"]["episodes"] == 3 and summary["protocol"]["seed"] == 5
    assert set(summary["protocol"]["success_rules"]) == {"success_any", "success_final"}
    rows = (outs[0] / "episodes.csv").read_text().splitlines()
    assert rows[0] == "episode,return,length,success_any,success_final" and len(rows) == 4
    # Three films over two rounds of two envs (both envs of the first round, env 0 of the second), one MP4 per
    # episode with its reset frame and one frame per step; a state agent: the frames are rendered, not observed.
    lengths = [int(float(r.split(",")[2])) for r in rows[1:]]
    assert sorted(p.name for p in outs[0].iterdir() if p.suffix == ".mp4") == [f"episode{k}.mp4" for k in range(3)]
    for k, length in enumerate(lengths):
        file = outs[0] / f"episode{k}.mp4"
        assert imageio_ffmpeg.count_frames_and_secs(str(file))[0] == length + 1, (file, length)
        first = next(imageio_ffmpeg.read_frames(str(file)))  # the metadata dict, then raw RGB frames
        size = first["size"]
        reader = imageio_ffmpeg.read_frames(str(file))
        next(reader)
        frame = np.frombuffer(next(reader), np.uint8).reshape(size[1], size[0], 3)
        assert frame.std() > 5, file  # a real picture, not a blank
    assert not [p for p in outs[1].iterdir() if p.suffix in (".mp4", ".gif")]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval/return"] == pytest.approx(summary["return"]["mean"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tb")).Reload().Tags()["images"]
    assert sorted(tags) == [f"eval/policy/episode{k}" for k in range(3)], tags


def test_a_foreign_file_or_a_teacher_checkpoint_is_one_clear_line(trained, tmp_path, capsys):
    from models.teacher_io import teacher_payload
    from models.world_model import TeacherWorldModel

    foreign = tmp_path / "notes.pt"
    foreign.write_text("not a checkpoint")
    config = configs.load_config(["--configs", "defaults", "metaworld", "metaworld_state", "debug",
                                "--source_tasks", "metaworld_reach"]).to_dict()
    teacher = tmp_path / "teacher.pt"
    tools.save_checkpoint(teacher, teacher_payload(TeacherWorldModel(config, 4), None, 0, config))
    for path, words in ((foreign, "cannot be loaded"), (teacher, "a teacher checkpoint"),
                        (tmp_path / "missing.pt", "not found")):
        assert artefacts_cli.main(["evaluate", "--checkpoint", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and str(path) in err, err
    assert artefacts_cli.main(["evaluate", "--checkpoint", str(trained[0]), "--task", "reach_nowhere"]) == 2
    assert "--task" in capsys.readouterr().err


def test_int8_keeps_the_weights_with_a_bounded_dequantization_error(trained):
    agent = trained[2]
    fp32 = dict(variants.make(agent, "fp32").state_dict())
    for name in ("int8_wo", "int8_dyn"):
        weights = variants.int8_weights(variants.make(agent, name))
        assert len(weights) >= 8, [w[0] for w in weights]  # encoder, RSSM and actor linears
        for key, qdata, scale in weights:
            w = fp32[key]
            assert qdata.dtype == torch.int8 and qdata.shape == w.shape
            zeros_q, zeros_w = (qdata == 0).float().mean().item(), (w == 0).float().mean().item()
            assert zeros_q <= zeros_w + 0.05, (key, zeros_q, zeros_w)  # not collapsed (scale-1.0 int8 gives ~90%)
            scale = scale.reshape(-1, *([1] * (w.dim() - 1))).float()
            err = (qdata.float() * scale - w).abs()
            assert torch.all(err <= 0.5 * scale + 1e-6), key  # at most half a step...
            assert torch.all(scale <= w.abs().amax(1, keepdim=True) / 127 * 1.01 + 1e-8), key  # ...of max|w_row|/127


def test_each_variant_file_loads_and_acts_close_to_fp32(trained, tmp_path):
    path, payload, agent, recorded = trained
    base = variants.make(agent, "fp32")
    ref = measure.replay_actions(base, base, recorded)
    tolerance = {"fp32": 0.0, "bf16": 0.05, "fp16": 0.01, "int8_wo": 0.03, "int8_dyn": 0.05}
    for name in variants.VARIANTS:
        module = variants.make(agent, name)
        file = variants.save(tmp_path / f"{name}.pt", module, name, payload)
        loaded = variants.load(student.read(file))
        actions = measure.replay_actions(loaded, base, recorded)
        assert np.array_equal(actions, measure.replay_actions(module, base, recorded)), name
        assert np.abs(actions - ref).max() <= tolerance[name], (name, np.abs(actions - ref).max())
    assert variants.parameter_bytes(variants.make(agent, "int8_wo")) < 0.5 * variants.parameter_bytes(base)


@pytest.mark.slow
def test_every_file_quantize_writes_loads_in_a_fresh_evaluate_process(trained, tmp_path, capsys):
    out = tmp_path / "q"
    assert artefacts_cli.main(["quantize", "--checkpoint", str(trained[0]), "--out", str(out), "--episodes", "2",
                               "--calls", "10"]) == 0
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == list(variants.VARIANTS)
    assert rows[0]["success_diff"] == 0.0 and rows[-1]["param_bytes"] < rows[0]["param_bytes"]
    assert not any(key.startswith("compiled") for r in rows for key in r), "compiled timings only with --compile"
    assert "| int8_wo |" in (out / "table.md").read_text()
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(f"{name}.pt" for name in variants.VARIANTS)
    # Each file in a process of its own that has imported nothing (torchao included) before reading it.
    for path in sorted(out.glob("*.pt")):
        proc = subprocess.run([sys.executable, "-m", "artefacts", "evaluate", "--checkpoint", str(path), "--episodes",
                               "1", "--video_episodes", "0", "--out", str(tmp_path / path.stem)], cwd=ROOT, text=True,
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, (path.name, proc.stderr[-3000:])
        assert "nan" not in proc.stdout and "(1 episode: no standard error)" in proc.stdout, proc.stdout
        summary = json.loads((tmp_path / path.stem / "summary.json").read_text())
        assert f"variant {path.stem}" in summary["protocol"]["policy"] and summary["success_any"]["se"] is None
    assert artefacts_cli.main(["quantize", "--checkpoint", str(out / "int8_wo.pt"), "--out", str(tmp_path / "r")]) == 2
    assert "already a variant" in capsys.readouterr().err
    assert artefacts_cli.main(["quantize", "--checkpoint", str(trained[0]), "--out", str(tmp_path / "old"),
                               "--episodes", "0", "--variants", "fp32", "--calls", "10", "--no_compile"]) == 0
    assert "--no_compile is deprecated" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_policy_gives_the_checkpoints_actions_without_the_repository(trained, tmp_path):
    _, _, agent, recorded = trained
    base = variants.make(agent, "fp32")
    assert artefacts_cli.main(["export", "--checkpoint", str(trained[0]), "--out", str(tmp_path / "policy.pt2")]) == 0
    file = tmp_path / "policy.pt2"
    ref = measure.replay_actions(base, base, recorded)
    assert np.array_equal(measure.replay_actions(export.load(file), base, recorded), ref)
    # A process that knows nothing of this repository (other cwd, no repo on the path) replays the episode.
    torch.save({"state": recorded[0]["state"], "is_first": recorded[0]["is_first"]}, tmp_path / "obs.pt")
    script = (
        "import sys, torch\n"
        "p = torch.export.load(sys.argv[1]).module(); d = torch.load(sys.argv[2])\n"
        f"s, h, a = torch.zeros(1, {base.dynamics.stoch}), torch.zeros(1, {base.dynamics.deter}), torch.zeros(1, 4)\n"
        "out = []\n"
        "for t in range(len(d['is_first'])):\n"
        "    a, s, h = p({'state': d['state'][t:t+1]}, d['is_first'][t:t+1], s, h, a); out.append(a[0])\n"
        "torch.save(torch.stack(out), sys.argv[3])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script, str(file), str(tmp_path / "obs.pt"), str(tmp_path / "act.pt")],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    actions = torch.load(tmp_path / "act.pt").numpy()
    assert np.array_equal(actions, ref[: len(actions)]) and len(actions) == len(recorded[0]["is_first"])


def test_evaluate_on_a_fixed_goal_set_sees_the_training_runs_first_goals_whatever_its_seed(trained):
    payload = trained[1]
    starts = {}
    for seed in (1, 2):
        for goal_set in (None, 0):
            eps, _, protocol = evaluation.run(payload, 2, seed=seed, goal_set=goal_set)
            starts[seed, goal_set] = np.stack([ep["state"][0] for ep in eps])
    assert np.array_equal(starts[1, 0], starts[2, 0])          # the goal set fixes the positions
    assert not np.array_equal(starts[1, None], starts[2, None])  # the seed draws them otherwise
    assert "fixed goal set 0" in protocol["goals"], protocol
