"""The handle-press study as committed: its power analysis (analysis/power.py), the per-seed-block teachers of a
sweep spec (`teacher: [A, B]`) and the study and pilot specs against PROTOCOL.md's design; nothing is trained."""
from __future__ import annotations

import math
import pathlib

import pytest

import configs
from analysis import power
from sweeps import jobs as job_graph, spec as sweep_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = ROOT / "sweeps" / "specs"
NEAR = ["metaworld_handle_press_side", "metaworld_handle_pull", "metaworld_handle_pull_side",
        "metaworld_button_press", "metaworld_door_open", "metaworld_reach"]


def test_half_width_is_the_t_interval_of_the_paired_difference():
    # sigma_d = 0.12 * sqrt(2 * 0.3) = 0.09295; t(0.975, 15) = 2.13145
    assert power.paired_sd(0.12, 0.7) == pytest.approx(0.092952, abs=1e-6)
    assert power.half_width(16, 0.12, 0.7) == pytest.approx(2.13145 * 0.092952 / 4, abs=1e-5)
    assert power.half_width(16, 0.12, 0.0) == pytest.approx(power.half_width(16, 0.12, 0.7) * math.sqrt(1 / 0.3))


def test_simulated_verdicts_are_calibrated_where_the_answer_is_known():
    null = power.simulate(32, 0.12, 0.7, 0.0, 0.05, sims=600, reps=400, seed=1)
    assert sum(null.values()) == pytest.approx(1.0)
    assert null["better"] < 0.06 and null["worse"] < 0.06  # nominal 0.025 each side
    assert power.simulate(16, 0.12, 0.7, 0.3, 0.05, sims=200, reps=300, seed=1)["better"] == 1.0
    tiny = power.simulate(64, 0.01, 0.7, 0.0, 0.05, sims=100, reps=300, seed=1)
    # a CI far narrower than the margin is never inconclusive: it is equivalent unless it misses 0 (~5%)
    assert tiny["inconclusive"] == 0.0 and tiny["not better by more than 0.05"] > 0.85
    staged = power.two_stage(8, 8, 0.12, 0.7, 0.3, 0.05, sims=100, reps=300, seed=1)
    assert staged["better"] == 1.0


def write(path: pathlib.Path, teacher) -> pathlib.Path:
    path.write_text(f"root: {path.parent / 'sweep'}\ncollect: {{tasks: [metaworld_reach]}}\n"
                    "teachers: {A: {flags: {seed: 0}}, B: {flags: {seed: 1}}}\n"
                    f"students: {{targets: [metaworld_handle_press], seeds: [3, 4, 5, 6, 7], methods: {{c: {{teacher: "
                    f"{teacher}, flags: {{use_distill: True}}}}, d: {{}}}}}}\n")
    return path


def teacher_of(job) -> str | None:
    command = job.command
    return command[command.index("--teacher_model_path") + 1].split("/")[-2] if "--teacher_model_path" in command \
        else None


def test_a_teacher_list_splits_the_seeds_into_blocks_in_order(tmp_path):
    jobs = {job.name: job for job in job_graph.build(sweep_spec.load(write(tmp_path / "s.yaml", "[A, B]"), ROOT))}
    got = {seed: teacher_of(jobs[f"students/handle_press/c/seed{seed}"]) for seed in (3, 4, 5, 6, 7)}
    assert got == {3: "A", 4: "A", 5: "A", 6: "B", 7: "B"}, got  # 5 seeds: index * 2 // 5
    assert jobs["students/handle_press/c/seed6"].deps == ["teachers/B"]
    assert teacher_of(jobs["students/handle_press/d/seed6"]) is None
    with pytest.raises(sweep_spec.SpecError, match="teacher 'C' is not a key of 'teachers'"):
        sweep_spec.load(write(tmp_path / "s.yaml", "[A, C]"), ROOT)


def stage(job):
    return configs.load_config(job.command[2:], stage=job.command[1])


def test_the_study_spec_implements_the_protocol():
    spec = sweep_spec.load(SPECS / "handle_press_near.yaml", ROOT)
    jobs = {job.name: job for job in job_graph.build(spec, python="python")}
    assert spec.source_tasks == NEAR and spec.targets == ["metaworld_handle_press"]
    assert spec.seeds == list(range(16)) and [m.name for m in spec.methods] == ["comet", "random_teacher", "dreamer"]
    assert "--obs both" in " ".join(jobs["data"].command) and "--episodes 50" in " ".join(jobs["data"].command)
    teachers = {name: stage(jobs[f"teachers/{name}"]) for name in ("A", "B")}
    assert (teachers["A"].seed, teachers["B"].seed) == (0, 1)
    for seed in range(16):
        dreamer = stage(jobs[f"students/handle_press/dreamer/seed{seed}"])
        assert (dreamer.cnn_depth, dreamer.dyn_deter, dreamer.batch_size, dreamer.obs) == (8, 64, 8, "pixel")
        assert (dreamer.eval_every, dreamer.eval_episodes, dreamer.eval_goals, dreamer.eval_goal_seed) == \
            (1000, 20, "fixed", 0)
        for arm in ("comet", "random_teacher"):
            job = jobs[f"students/handle_press/{arm}/seed{seed}"]
            assert teacher_of(job) == ("A" if seed < 8 else "B"), (arm, seed)
            config = stage(job)
            assert config.use_distill and config.steps == dreamer.steps and config.seed == seed
        assert stage(jobs[f"students/handle_press/random_teacher/seed{seed}"]).teacher_random_seed >= 0
        assert stage(jobs[f"students/handle_press/comet/seed{seed}"]).teacher_random_seed < 0
    assert jobs["report"].command[-4:] == ["--baseline", "dreamer", "--equivalence", "0.05"]


def test_the_pilot_uses_the_study_evaluation_on_seeds_the_study_does_not():
    pilot = sweep_spec.load(SPECS / "handle_press_near_pilot.yaml", ROOT)
    study = sweep_spec.load(SPECS / "handle_press_near.yaml", ROOT)
    assert not set(pilot.seeds) & set(study.seeds) and len(pilot.seeds) == 4
    assert pilot.flags["configs"] == study.flags["configs"] and [m.name for m in pilot.methods] == ["dreamer"]
