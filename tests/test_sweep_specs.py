"""The committed sweep specs load, build their job graphs, and every job's command line is one its stage script
accepts as given (parsed by the stage's own config loader, no foreign-flag warnings); nothing is run."""
import collections
import pathlib

import pytest

import configs
from envs.tasks import TASKS
from sweeps import gpu_share, jobs as job_graph, spec as spec_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = ROOT / "sweeps" / "specs"


def stage_config(job, capsys):
    """The config the job's stage script would run with; it must warn about nothing."""
    capsys.readouterr()
    config = configs.load_config(job.command[2:], stage=job.command[1])
    assert "warning" not in capsys.readouterr().err, job.name
    return config


def test_paper_pixel_gpu_spec_builds_the_full_comparison(capsys):
    spec = spec_module.load(SPECS / "paper_pixel_gpu.yaml", ROOT)
    jobs = job_graph.build(spec, python="python")
    kinds = collections.Counter(job.name.split("/")[0] for job in jobs)
    # 6 targets x 8 seeds x 4 methods students; OOD for the 3 distilled methods; 2 teachers; data; report.
    assert kinds == {"data": 1, "teachers": 2, "students": 192, "ood": 144, "report": 1}, kinds
    assert set(spec.targets) <= set(TASKS) and not set(spec.targets) & set(spec.source_tasks)
    assert len(spec.source_tasks) == 6 and spec.seeds == list(range(8))
    by_name = {job.name: job for job in jobs}
    assert by_name["data"].num_gpus == 0 and by_name["report"].num_gpus == 0
    for name in ("teachers/moe", "teachers/label_cnn"):
        config = stage_config(by_name[name], capsys)
        assert (config.device, config.precision, config.obs, config.compile) == ("cuda", 16, "pixel", True), name
        assert config.pretrain_iterations == 100_000 and config.n_experts == 6 and config.size == [64, 64], name
    assert stage_config(by_name["teachers/label_cnn"], capsys).teacher_encoder_mode == "label_cnn"
    # num_gpus auto: each job's share of a GPU by its kind's memory (sweeps/gpu_share.py), here for an 80 GB GPU.
    for job in jobs:
        kind = {"teachers": "teacher", "students": "student", "ood": "ood"}.get(job.name.split("/")[0])
        if kind is not None:
            assert job.num_gpus == gpu_share.fraction(kind, gpu_share.DEFAULT_GPU_GIB) and job.num_cpus == 4, job.name
    assert by_name["students/drawer_close/dreamer/seed0"].num_gpus <= 1 / 4, "a GPU serves several students"
    for job in (j for j in jobs if j.name.endswith("/seed0")):  # every target x method, one seed
        config = stage_config(job, capsys)
        assert (config.device, config.obs) == ("cuda", "pixel"), job.name
        if job.name.startswith("students/"):
            assert config.steps == 500_000 and config.batch_size == 50 and config.batch_length == 50, job.name


# Specs whose every job, parsed by its stage, takes over 10 s (the test above checks one seed of the paper spec).
BIG_SPECS = ("paper_pixel_gpu.yaml", "handle_press_near.yaml")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.name in BIG_SPECS else p
                                  for p in sorted(SPECS.glob("*.yaml"))], ids=lambda p: p.name)
def test_other_committed_specs_give_commands_their_stages_accept(path, capsys):
    jobs = job_graph.build(spec_module.load(path, ROOT), python="python")
    for job in jobs:
        if job.command[1] not in ("collect_data.py", "results.py"):
            stage_config(job, capsys)


# --- the whole spec checked before any job runs -----------------------------------------------------------------

def base_spec() -> dict:
    """A small, valid spec: two source tasks, a MoE teacher (with a behaviour actor), two methods, OOD."""
    return {"root": "runs/x", "resources": {"num_cpus": 1},
            "flags": {"configs": ["defaults", "metaworld", "quickstart"], "progress": False},
            "collect": {"tasks": ["metaworld_reach", "door-open"], "flags": {"episodes": 2, "obs": "state"}},
            "teachers": {"moe": {"flags": {"pretrain_iterations": 3, "teacher_actor_steps": 10}}},
            "students": {"targets": ["drawer_close"], "seeds": [0, 1], "flags": {"steps": 160},
                         "methods": {"dreamer": {"flags": {"use_distill": False}},
                                     "comet": {"teacher": "moe", "flags": {"use_distill": True}}}},
            "ood": True, "report": {"last": 1}}


def write(tmp_path, spec: dict, text: str | None = None):
    from ruamel.yaml import YAML

    path = tmp_path / "spec.yaml"
    if text is not None:
        path.write_text(text)
    else:
        with open(path, "w") as f:
            YAML().dump(spec, f)
    return path


def change(where: str, value):
    """A function that sets `where` (dotted keys; None deletes) in a spec."""
    def apply(spec):
        *parents, last = where.split(".")
        node = spec
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
        return spec
    return apply


BAD = {  # case -> (change to the base spec, words the one error line must hold)
    "typo'd student flag": (change("students.flags.stpes", 10), ["'students.flags.stpes'", "did you mean 'steps'"]),
    "wrong value type": (change("students.flags.steps", "lots"), ["'students.flags.steps'", "expected an integer, got 'lots'", "default is 3000"]),
    "unknown distill_mode": (change("students.methods.comet.flags.distill_mode", "cometx"),
                             ["'students.methods.comet.flags.distill_mode'", "did you mean 'comet'"]),
    "unknown target": (change("students.targets", ["metaworld_windoww_close"]),
                       ["'students.targets'", "did you mean 'metaworld_window_close'"]),
    "one target in two spellings": (change("students.targets", ["window-close", "metaworld_window_close"]),
                                    ["'students.targets'", "metaworld_window_close twice", "list each task once"]),
    "one source task in two spellings": (change("collect.tasks", ["reach", "reach-v3"]), ["'collect.tasks'", "twice"]),
    "distillation without a teacher": (change("students.methods.comet.teacher", None),
                                       ["'students.methods.comet'", "names no teacher", "teacher:"]),
    "a teacher that is not defined": (change("students.methods.comet.teacher", "big"), ["teacher 'big'"]),
    "a teacher the student ignores": (change("students.methods.dreamer.teacher", "moe"),
                                      ["'students.methods.dreamer'", "use_distill is False"]),
    "ood not a boolean": (change("ood", "maybe"), ["'ood'", "true or false"]),
    "a seed twice": (change("students.seeds", [0, 0]), ["'students.seeds'", "seed 0 twice"]),
    "a teacher flag among the students'": (change("students.flags.n_experts", 2),
                                           ["'students.flags.n_experts'", "dreamer_pretrain.py", "teachers.<name>.flags"]),
    "a student flag among a teacher's": (change("teachers.moe.flags.use_distill", True),
                                         ["'teachers.moe.flags.use_distill'", "students.flags or a method's flags"]),
    "a flag the sweep sets": (change("students.methods.comet.flags.seed", 3),
                              ["'students.methods.comet.flags.seed'", "students.seeds", "remove it"]),
    "no stage has the flag": (change("flags.no_such_flag", 1), ["'flags.no_such_flag'", "no stage has a flag"]),
    "an unknown config block": (change("flags.configs", ["defaults", "metaworld", "quickstrat"]),
                                ["'flags.configs'", "did you mean 'quickstart'"]),
    "vid2act on a MoE teacher": (change("students.methods.comet.flags.distill_mode", "vid2act"),
                                 ["'students.methods.comet'", "needs a 'label_cnn' teacher", "teacher_encoder_mode"]),
    "critic without the teacher's critic": (change("students.methods.comet.flags.distill_mode", "critic"),
                                            ["needs the teacher's behaviour critic", "teacher_critic_steps"]),
    "a pixel teacher for state students": (change("teachers.moe.flags.obs", "pixel"),
                                           ["'teachers.moe'", "collect.flags.obs"]),
    "a collect flag of the wrong type": (change("collect.flags.episodes", "many"),
                                         ["'collect.flags.episodes'", "invalid int value"]),
    "a collect flag out of range": (change("collect.flags.noise", -1), ["'collect.flags'", "--noise must be >= 0"]),
    "a typo'd report flag": (change("report.lsat", 2), ["'report.lsat'", "did you mean 'last'"]),
    "a report flag out of range": (change("report.last", 0), ["'report'", "--last >= 1"]),
    "a folder name with a slash": (change("students.methods", {"a/b": {"flags": {"use_distill": False}}}),
                                   ["'students.methods' name 'a/b'"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_spec_is_one_line_naming_the_key_before_any_job(case, tmp_path, capsys):
    import sweep

    mutate, words = BAD[case]
    path = write(tmp_path, mutate(base_spec()))
    assert sweep.main([str(path), "--dry_run"]) == 2, case  # before any job: not even the dry run's command lines
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and str(path) in err and captured.out == "", (case, err, captured.out)
    for word in words:
        assert word in err, (case, word, err)


def test_a_duplicate_yaml_key_is_named_with_its_line(tmp_path):
    text = ("root: runs/x\nstudents:\n  targets: [drawer_close]\n  seeds: [0]\n  methods: {dreamer: {flags: "
            "{use_distill: False}}}\n  seeds: [1]\n")
    with pytest.raises(spec_module.SpecError, match=r"spec.yaml:6: key 'seeds' is given twice in the mapping that "
                                                    r"starts on line 3; keep one"):
        spec_module.load(write(tmp_path, {}, text), ROOT)


@pytest.mark.parametrize("word,expected", [("no", False), ("off", False), ("false", False), ("False", False),
                                           ("yes", True), ("on", True), ("true", True)])
def test_ood_takes_the_words_a_flag_takes(word, expected, tmp_path):
    text = write(tmp_path, base_spec()).read_text().replace("ood: true", f"ood: {word}")
    loaded = spec_module.load(write(tmp_path, {}, text), ROOT)
    assert loaded.ood is expected
    assert any(job.name.startswith("ood/") for job in job_graph.build(loaded)) is expected


def test_targets_and_job_names_are_canonical_whatever_the_spelling(tmp_path):
    spec = change("students.targets", ["window-close", "Drawer_Close-v3"])(base_spec())
    loaded = spec_module.load(write(tmp_path, spec), ROOT)
    assert loaded.targets == ["metaworld_window_close", "metaworld_drawer_close"]
    assert loaded.source_tasks == ["metaworld_reach", "metaworld_door_open"]
    names = {job.name for job in job_graph.build(loaded)}
    assert {"students/window_close/comet/seed1", "students/drawer_close/dreamer/seed0",
            "ood/window_close/comet/seed0"} <= names, sorted(names)


@pytest.mark.parametrize("script", ["sweep.py", "results.py"])
def test_help_cites_only_files_that_exist(script):
    """Every file of the repository that --help names exists; placeholders (SPEC.yaml, NAME) and the outputs a
    command would write (runs/..., --out folders) aside."""
    import re
    import subprocess
    import sys

    text = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120).stdout
    words = {w.strip("'\"(),;:") for w in text.split()}
    # paths (a bare name such as config.yaml or results.md is a file of a run or a report, not of the repository)
    cited = {w for w in words if re.fullmatch(r"[\w./-]+/[\w.-]+\.(py|md|yaml)|[\w-]+\.py", w)
             and not re.search(r"[A-Z]{3,}|\*", w)}
    assert cited, text  # it does point somewhere
    assert not [c for c in cited if not (ROOT / c).exists()], (sorted(cited), text)
