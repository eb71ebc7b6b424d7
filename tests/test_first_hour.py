"""What a new user meets first, on a real tiny state run of the student: an eval video although the agent
sees only the state, a warned and recorded config change on resume, prefill episodes left out of the train
figures and of OOD student sets, and per-stage --help."""
import json
import pathlib
import subprocess
import sys

import pytest

import dreamer_distill
import replay
from ood.sources import prefill_episodes, student_files
from tests.conftest import ROOT

RUN = ["--configs", "defaults", "metaworld_state", "debug", "--task", "reach-v3", "--steps", "160", "--prefill", "80",
       "--eval_every", "80", "--log_every", "40", "--progress", "False", "--threads", "1"]


@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    """A 160-env-step state student (episodes of 40 env steps, the first 80 random)."""
    logdir = tmp_path_factory.mktemp("runs") / "student"
    assert dreamer_distill.main([*RUN, "--logdir", str(logdir)]) == 0
    return logdir


def test_state_run_logs_an_eval_video(state_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(state_run), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/policy" in acc.Tags()["images"]
    videos = acc.Images("eval/policy")
    assert [v.step for v in videos] == [80, 160]
    assert videos[-1].encoded_image_string[:6] == b"GIF89a" and (videos[-1].width, videos[-1].height) == (64, 64)
    import io

    from PIL import Image

    gif = Image.open(io.BytesIO(videos[-1].encoded_image_string))
    assert gif.n_frames == 21  # the reset frame and 20 policy steps of one evaluation episode


def test_train_episode_figures_leave_out_the_prefill_episodes(state_run):
    """The first two episodes (began at env steps 0 and 40 < prefill 80) are random-action data: the `train/`
    episode figures in metrics.jsonl and TensorBoard hold only the last two, the policy's."""
    from tools import success_any
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    episodes = [ep for _, ep in sorted(replay.load_dir(state_run / "train_eps").items())]
    assert len(episodes) == 4
    rows = {r["step"]: r for r in map(json.loads, (state_run / "metrics.jsonl").read_text().splitlines())
            if "train/episodes" in r}
    assert [rows[s]["train/episodes"] for s in (40, 80, 120, 160)] == [1, 2, 3, 4]
    assert not any(k in rows[s] for s in (40, 80) for k in ("train/success_any", "train/return"))
    for step, episode in zip((120, 160), episodes[2:]):
        assert rows[step]["train/success_any"] == float(success_any(episode["success"]))
        assert rows[step]["train/return"] == pytest.approx(float(episode["reward"].sum()), rel=1e-6)
    acc = EventAccumulator(str(state_run), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train/success_any", "train/success_final", "train/return"):
        assert [e.step for e in acc.Scalars(tag)] == [120, 160], tag
    assert [e.step for e in acc.Scalars("train/episodes")] == [40, 80, 120, 160]


def test_resume_with_a_changed_flag_warns_and_keeps_the_history(state_run, capsys):
    capsys.readouterr()
    assert dreamer_distill.main([*RUN, "--steps", "200", "--model_lr", "0.001", "--logdir", str(state_run)]) == 0
    err = capsys.readouterr().err
    assert "continues at step 160 with a changed config" in err
    assert "model_lr 0.0006 -> 0.001" in err and "steps 160 -> 200" in err
    history = [json.loads(line) for line in (state_run / "config_history.jsonl").read_text().splitlines()]
    assert [h["from_step"] for h in history] == [0, 160]
    assert history[0]["config"]["model_lr"] == 0.0006 and history[1]["config"]["model_lr"] == 0.001
    assert history[1]["changed"]["model_lr"] == [0.0006, 0.001]
    assert "model_lr: 0.001" in (state_run / "config.yaml").read_text()


def test_prefill_episodes_are_left_out_of_the_ood_student_set(state_run):
    train = state_run / "train_eps"
    files = replay.episode_files(train)
    count, note = prefill_episodes(train, files)
    assert count == 2 and f"left out 2 of {len(files)} episodes" in note
    notes = []
    kept = student_files(str(train), skip_prefill=True, notes=notes)
    assert kept == files[2:] and notes == [note]
    assert student_files(str(train)) == files  # --ood_skip_prefill False keeps them all


def run_help(script, *extra):
    return subprocess.run([sys.executable, script, *extra, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("script, own, foreign", [
    ("dreamer_distill.py", ["--prefill", "--use_distill", "--distill_mode", "--task"], ["--n_experts", "--student_dir"]),
    ("dreamer_pretrain.py", ["--n_experts", "--source_task_dirs", "--pretrain_iterations"], ["--prefill", "--student_dir"]),
    ("ood_detection.py", ["--student_dir", "--ood_skip_prefill", "--teacher_model_path"], ["--prefill", "--n_experts"]),
    # collect_data's own flags (--tasks, --obs, --seed) replace the config keys task, obs, seed; envs it never reads
    ("collect_data.py", ["--tasks", "--episodes", "--obs", "--seed", "--workers", "--time_limit", "--source_tasks"],
     ["--task", "--envs", "--eval_envs", "--prefill", "--n_experts"]),
])
def test_stage_help_lists_its_own_flags_with_descriptions(script, own, foreign):
    done = run_help(script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for flag in own:
        row = next(line for line in lines if line.strip().startswith(flag + " "))
        text = row.strip()[len(flag):].strip()
        assert not text.startswith("(default"), row  # a description, not only the default
    for flag in foreign:
        assert not any(line.strip().startswith(flag + " ") for line in lines), flag
    assert sum(line.strip().startswith(own[0] + " ") for line in lines) == 1  # listed once
    assert done.stdout.startswith(f"usage: {script} ")


@pytest.mark.slow  # a real student run in a subprocess
def test_flags_of_another_stage_warn(tmp_path):
    done = subprocess.run([sys.executable, "dreamer_distill.py", *RUN, "--n_experts", "12", "--steps", "0",
                           "--logdir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--n_experts is read by dreamer_pretrain.py, not by dreamer_distill.py" in done.stderr


def test_console_commands_behave_like_the_scripts(tmp_path):
    # The installed console command (pyproject's [project.scripts]), run from another folder.
    command = pathlib.Path(sys.executable).parent / "comet-pretrain"
    assert command.exists(), f"{command}: run ./install_add.sh (it installs the console commands)"
    done = subprocess.run([str(command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: dreamer_pretrain.py"), done.stderr
    done = subprocess.run([str(command), "--source_tasks", "reech", "--logdir", str(tmp_path / "t")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "did you mean 'metaworld_reach'?" in done.stderr
