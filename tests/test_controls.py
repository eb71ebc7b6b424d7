"""The two controls of a distillation arm: a random teacher (the loaded teacher's architecture and data path with
weights re-initialised from a seed) and shuffled views (the view labels the projection reads permuted per
batch), each one line in a sweep spec."""
from __future__ import annotations

import pathlib

import pytest
import torch

import configs
from methods import MethodError, build_method
from models.teacher_io import load_teacher, reinitialise
from sweeps import jobs as job_graph, spec as spec_module

from tests.test_distill import _agent, _save_teacher, make_batch, make_config, make_pair, make_teacher

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_teacher_is_the_same_architecture_with_weights_from_the_seed_alone(tmp_path):
    config, teacher = make_teacher(3)
    path = _save_teacher(tmp_path / "teacher.pt", config, teacher)
    trained = _weights(load_teacher(path)[0])
    student = make_config("--teacher_random_seed", "7")
    first = load_teacher(path)[0]
    build_method(student, first, 24, verbose=False)
    loaded = load_teacher(path)[0]
    before = torch.random.get_rng_state()
    reinitialise(loaded, 7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's own random stream is untouched
    again = load_teacher(path)[0]
    build_method(student, again, 24, verbose=False)
    other = reinitialise(load_teacher(path)[0], 8)
    assert _same(_weights(first), _weights(again))  # reproducible from the seed
    assert not _same(_weights(first), trained) and not _same(_weights(first), _weights(other))
    assert {k: v.shape for k, v in _weights(first).items()} == {k: v.shape for k, v in trained.items()}
    # A seed of -1 (the default) keeps the trained weights.
    kept = load_teacher(path)[0]
    build_method(make_config(), kept, 24, verbose=False)
    assert _same(_weights(kept), trained)


def test_random_teacher_arm_through_the_student_s_distiller_build(tmp_path):
    from training.student import build_distiller

    config, teacher = make_teacher(2)
    path = _save_teacher(tmp_path / "teacher.pt", config, teacher)
    student = make_config("--use_distill", "True", "--teacher_model_path", str(path), "--teacher_random_seed", "3",
                          "--source_tasks", ",".join(config.source_tasks))
    distiller = build_distiller(student, _agent(student), "cpu")
    assert not _same(_weights(distiller.teacher), _weights(teacher))
    assert _same(_weights(distiller.teacher), _weights(reinitialise(load_teacher(path)[0], 3)))
    assert distiller.get_extra_state()["teacher_random_seed"] == 3  # a resume without the flag is refused


def test_shuffled_views_permute_the_labels_per_batch_reproducibly():
    _, _, wm, d = make_pair(4, "--shuffle_views", "True", "--seed", "5")
    labels = []
    for update in range(12):
        d.n_updates = update
        labels.append(tuple(d.view_labels().tolist()))
    assert all(sorted(x) == [0, 1, 2, 3] for x in labels)
    assert len(set(labels)) > 3 and any(x != (0, 1, 2, 3) for x in labels)
    d.n_updates = 4
    assert tuple(d.view_labels().tolist()) == labels[4]  # drawn from (seed, update): a resume draws the same
    d.set_active([2])
    assert d.view_labels().tolist() == [2]
    _, _, _, plain = make_pair(4)
    assert all(tuple(plain.view_labels().tolist()) == (0, 1, 2, 3) for _ in range(3))


def test_shuffled_views_feed_the_permuted_labels_to_the_projection():
    _, _, wm, d = make_pair(3, "--shuffle_views", "True", "--seed", "1")
    _, _, _, plain = make_pair(3)  # the same seed: the same teacher, projection and relevance weights
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), d.parameters()))
    with torch.no_grad():  # the one-hot rows start at zero; as after training, let the labels matter
        bias = torch.randn_like(d.proj.task.task_bias)
        d.proj.task.task_bias.copy_(bias)
        plain.proj.task.task_bias.copy_(bias)
    seen = []
    project = d.project

    def recording(x, tasks=None):
        seen.append(tasks.tolist())
        return project(x, tasks)

    d.project = recording
    data = wm.preprocess(make_batch(0))
    _, _, post = wm.loss(data)
    for update in range(6):
        d.n_updates = update
        expected = d.view_labels().tolist()
        loss, _ = d.world_model_loss(data, post, wm, update)
        assert seen[-1] == expected
        plain.n_updates = update
        reference, _ = plain.world_model_loss(data, post, wm, update)
        assert torch.isclose(loss, reference) == (expected == [0, 1, 2]), (expected, loss, reference)
    assert any(labels != [0, 1, 2] for labels in seen)


@pytest.mark.parametrize("mode,teacher_mode,extra", [("vid2act", "label_cnn", []), ("reward", "moe", []),
                                                     ("comet", "moe", ["--conditional_distill", "False"])])
def test_shuffled_views_without_view_labels_to_permute_are_a_clear_error(mode, teacher_mode, extra):
    _, teacher = make_teacher(2, teacher_mode)
    with pytest.raises(MethodError, match="shuffle_views"):
        build_method(make_config("--distill_mode", mode, "--shuffle_views", "True", *extra), teacher, 24,
                     verbose=False)


def test_each_control_is_one_line_in_a_sweep_spec(tmp_path, capsys):
    text = (ROOT / "sweeps" / "specs" / "pixel_methods.yaml").read_text()
    anchor = "    dreamer: {flags: {use_distill: False}}\n"
    assert anchor in text
    lines = ("    comet_random: {teacher: moe, flags: {use_distill: True, teacher_random_seed: 0}}\n"
             "    comet_shuffled: {teacher: moe, flags: {use_distill: True, shuffle_views: True}}\n")
    path = tmp_path / "controls.yaml"
    path.write_text(text.replace(anchor, anchor + lines))
    jobs = {job.name: job for job in job_graph.build(spec_module.load(path, ROOT), python="python")}
    for arm, key, value in (("comet_random", "teacher_random_seed", 0), ("comet_shuffled", "shuffle_views", True)):
        job = jobs[f"students/handle_press/{arm}/seed0"]
        capsys.readouterr()
        config = configs.load_config(job.command[2:], stage=job.command[1])
        assert "warning" not in capsys.readouterr().err
        assert config[key] == value and config.use_distill and config.teacher_model_path.endswith("teacher.pt"), arm
