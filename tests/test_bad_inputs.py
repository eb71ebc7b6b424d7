"""Bad input caught at the door, as a table: each malformed input -> exit code, one line naming the file or
flag and what is wrong, and nothing lost (what was on disk is still there). Real data, real scripts (their
`main`), tiny `debug` configs."""
import os
import pathlib
import shutil

import numpy as np
import pytest

import collect_data
import dreamer_distill
import dreamer_pretrain
import ood_detection
import replay

COMMON = ["--configs", "defaults", "metaworld", "metaworld_state", "debug", "--device", "cpu", "--progress", "False",
          "--threads", "1"]
TASKS = "metaworld_reach,metaworld_push"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Collected state data (4 episodes of 2 tasks) and a teacher pretrained on it."""
    root = tmp_path_factory.mktemp("bad_inputs")
    assert collect_data.main(["--tasks", TASKS, "--episodes", "4", "--obs", "state", "--workers", "1",
                              "--out", str(root / "data"), *COMMON]) == 0
    dirs = [root / "data" / "reach", root / "data" / "push"]
    assert dreamer_pretrain.main([*COMMON, "--source_tasks", TASKS, "--source_task_dirs", ",".join(map(str, dirs)),
                                  "--logdir", str(root / "teacher")]) == 0
    return {"root": root, "dirs": dirs, "teacher": root / "teacher" / "teacher.pt"}


def copy_sources(world, tmp_path) -> list[pathlib.Path]:
    out = [tmp_path / d.name for d in world["dirs"]]
    for src, dst in zip(world["dirs"], out):
        shutil.copytree(src, dst)
    return out


def damage(path: pathlib.Path, how: str) -> None:
    """Rewrite one episode file in a malformed way."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        episode = dict(np.load(path))
        if how == "action_width":
            episode["action"] = episode["action"][:, :3]
        elif how == "nan":
            episode["state"][5, 2] = np.nan
        elif how == "inf_reward":
            episode["reward"][3] = np.inf
        np.savez_compressed(path, **episode)


def pretrain_argv(world, dirs, logdir, *extra):
    return [*COMMON, "--source_tasks", TASKS, "--source_task_dirs", ",".join(map(str, dirs)), "--logdir", str(logdir),
            *extra]


def student_argv(world, logdir, *extra):
    return [*COMMON, "--task", "metaworld_drawer_close", "--steps", "80", "--logdir", str(logdir), *extra]


# --- each case: (prepare(world, tmp_path) -> (main, argv, files that must survive)), exit code, match ---------

def skipped_source_file(how):
    def prepare(world, tmp_path):
        dirs = copy_sources(world, tmp_path)
        victim = replay.episode_files(dirs[1])[2]  # not the first file
        damage(victim, how)
        return dreamer_pretrain.main, pretrain_argv(world, dirs, tmp_path / "t"), [victim]
    return prepare


def all_bad_source_folder(world, tmp_path):
    dirs = copy_sources(world, tmp_path)
    for path in replay.episode_files(dirs[1]):
        damage(path, "nan")
    return dreamer_pretrain.main, pretrain_argv(world, dirs, tmp_path / "t"), replay.episode_files(dirs[1])


def collect_listed_file(how):
    def prepare(world, tmp_path):
        out = tmp_path / "data"
        shutil.copytree(world["root"] / "data", out)
        victim = replay.episode_files(out / "reach")[1]  # listed in the manifest
        damage(victim, how)
        argv = ["--tasks", TASKS, "--episodes", "4", "--obs", "state", "--workers", "1", "--out", str(out), *COMMON]
        # The damaged file is kept as <name>.bad; the other task's files stay as they were.
        return collect_data.main, argv, [(victim.with_name(victim.name + ".bad"), victim.read_bytes()),
                                         *replay.episode_files(out / "push")]
    return prepare


def ood_student_file(how):
    def prepare(world, tmp_path):
        students = tmp_path / "student"
        shutil.copytree(world["dirs"][0], students)
        victim = replay.episode_files(students)[1]
        damage(victim, how)
        argv = [*COMMON, "--teacher_model_path", str(world["teacher"]), "--source_dir", str(world["root"] / "data"),
                "--student_dir", str(students), "--out", str(tmp_path / "ood"), "--ood_fit_fraction", "0.5",
                "--ood_calib_fraction", "0.5"]
        return ood_detection.main, argv, [victim]
    return prepare


def simple(main, argv_fn):
    def prepare(world, tmp_path):
        return main, argv_fn(world, tmp_path), []
    return prepare


def locked_logdir(world, tmp_path):
    """The folder's lock held (an OS lock, as a live run holds it) by this very process through another open file."""
    from training import run_state

    logdir = tmp_path / "run"
    logdir.mkdir()
    run_state.take(logdir / ".lock")  # released when the test process ends
    (logdir / "notes.txt").write_text("keep")
    return dreamer_distill.main, student_argv(world, logdir), [logdir / "notes.txt", logdir / ".lock"]


def resume_false(world, tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "notes.txt").write_text("keep")
    return dreamer_pretrain.main, pretrain_argv(world, world["dirs"], logdir, "--resume", "False"), [logdir / "notes.txt"]


def logdir_under_a_file(world, tmp_path):
    (tmp_path / "file").write_text("keep")
    return dreamer_distill.main, student_argv(world, tmp_path / "file" / "run"), [tmp_path / "file"]


def read_only_logdir(world, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    logdir = tmp_path / "ro"
    logdir.mkdir(mode=0o500)
    return dreamer_distill.main, student_argv(world, logdir / "run"), []


CASES = {
    # name: (prepare, exit code, text of the one line naming the problem)
    "pretrain: wrong action width, not the first file": (skipped_source_file("action_width"), 0, "'action' has width 3"),
    "pretrain: NaN in a state": (skipped_source_file("nan"), 0, "'state' holds NaN or inf"),
    "pretrain: inf reward": (skipped_source_file("inf_reward"), 0, "'reward' holds NaN or inf"),
    "pretrain: truncated file": (skipped_source_file("truncated"), 0, "unreadable"),
    "pretrain: every file of a folder bad": (all_bad_source_folder, 2, "no usable episode for task 'metaworld_push'"),
    "pretrain: folder count": (simple(dreamer_pretrain.main, lambda w, t: pretrain_argv(w, w["dirs"][:1], t / "x")),
                               2, "1 folders but source_tasks has 2"),
    "pretrain: --resume False on a used logdir": (resume_false, 2, "--resume True"),
    "collect: listed file truncated": (collect_listed_file("truncated"), 0, "will collect episode 1 again"),
    "collect: listed file empty": (collect_listed_file("empty"), 0, "will collect episode 1 again"),
    "collect: listed file with NaN": (collect_listed_file("nan"), 0, "will collect episode 1 again"),
    "collect: --episode": (simple(collect_data.main, lambda w, t: ["--tasks", TASKS, "--episode", "3", "--out",
                                                                  str(t)]), 2, "did you mean '--episodes'"),
    "collect: unknown task": (simple(collect_data.main, lambda w, t: ["--tasks", "metaworld_nope", "--out", str(t)]),
                              2, "unknown task 'metaworld_nope'"),
    "student: --source_tasks disagrees with the teacher": (
        simple(dreamer_distill.main, lambda w, t: student_argv(w, t / "s", "--use_distill", "True",
                                                               "--teacher_model_path", str(w["teacher"]),
                                                               "--source_tasks", "metaworld_push,metaworld_reach")),
        2, "disagrees with the teacher's source tasks"),
    "student: missing teacher": (simple(dreamer_distill.main, lambda w, t: student_argv(
        w, t / "s", "--use_distill", "True", "--teacher_model_path", str(t / "none.pt"))), 2, "no such file"),
    "student: unknown flag": (simple(dreamer_distill.main, lambda w, t: student_argv(w, t / "s", "--step", "5")),
                              2, "did you mean '--steps'"),
    "student: --envs 0": (simple(dreamer_distill.main, lambda w, t: student_argv(w, t / "s", "--envs", "0")),
                          2, "--envs must be >= 1, got 0"),
    "student: --batch_size 0": (simple(dreamer_distill.main, lambda w, t: student_argv(w, t / "s", "--batch_size",
                                                                                          "0")),
                                2, "--batch_size must be >= 1, got 0"),
    "student: locked logdir": (locked_logdir, 2, f"in use by another run (PID {os.getpid()} on "),
    "student: logdir under a file": (logdir_under_a_file, 2, "cannot create it"),
    "student: read-only logdir": (read_only_logdir, 2, "not writable"),
    "ood: wrong action width in the student's episodes": (ood_student_file("action_width"), 0, "'action' has width 3"),
    "ood: NaN in the student's episodes": (ood_student_file("nan"), 0, "'state' holds NaN or inf"),
}


@pytest.mark.timeout_hint(60)
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(world, tmp_path, capsys, caplog, case):
    prepare, code, text = CASES[case]
    main, argv, keep = prepare(world, tmp_path)
    before = dict(p if isinstance(p, tuple) else (p, p.read_bytes()) for p in keep)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err.splitlines() + [r.getMessage() for r in caplog.records]
    hits = sorted({line for line in err if text in line})
    assert len(hits) == 1, (case, err)
    if code == 2:  # a usage error is the only line besides informational notes (e.g. scaled log_every)
        assert len({line for line in err if line.strip() and not line.startswith("note:")}) == 1, err
    if keep and code == 0 and "collect" not in case:  # a skipped file is named in its warning
        assert keep[0].name in hits[0], hits
    for path, data in before.items():
        assert path.is_file() and path.read_bytes() == data, f"{path} was changed or lost"
