"""A sweep spec's flags checked against the stages that read them, before any job runs.

Every key of a flags block must be a flag of a stage that block feeds (a config key the stage reads, or one of
collect_data.py's and results.py's own flags), its value must parse as that flag's type, a key the sweep sets itself
is refused, and every method must fit its teacher: a student that distils names a teacher, its `distill_mode` is a
registered method, the teacher has the encoder and behaviour teachers the method needs and reads observations the
student and the source data have. Each error is one SpecError line: the spec, the key, the fix.
"""
from __future__ import annotations

import difflib
import functools
from typing import Any

import configs
from sweeps.jobs import arg_text, for_stage
from sweeps.spec import Method, Spec, SpecError
from tools import OBS_KEYS, UsageError

TRAINING = ("dreamer_pretrain.py", "dreamer_distill.py", "ood_detection.py")
# key -> where the sweep takes it from; the sweep puts it on the command line of every job that reads it
SET_BY_SWEEP = {"logdir": "the job's folder under root", "resume": "the sweep itself (it resumes unfinished jobs)",
                "task": "students.targets", "source_tasks": "collect.tasks", "source_task_dirs": "collect.tasks",
                "teacher_model_path": "the method's `teacher`", "threads": "resources.num_cpus",
                "ood_threads": "resources.num_cpus", "source_dir": "collect.tasks",
                "student_dir": "the student's folder", "out": "the job's folder under root"}
STUDENT_SET = {**SET_BY_SWEEP, "seed": "students.seeds"}
COLLECT_SET = {"tasks": "collect.tasks", "out": "root", "workers": "resources.num_cpus"}
REPORT_SET = {"runs": "the sweep's students folder", "out": "root"}
# stage -> the spec block its flags belong in
HOME = {"dreamer_pretrain.py": "a teacher's flags (teachers.<name>.flags)",
        "dreamer_distill.py": "students.flags or a method's flags", "ood_detection.py": "the global `flags`",
        "collect_data.py": "collect.flags"}


@functools.lru_cache(maxsize=None)
def _known() -> dict[str, tuple[str, str]]:
    return configs.describe(configs.CONFIG_FILE)


@functools.lru_cache(maxsize=None)
def _stage_keys() -> dict[str, frozenset]:
    return {stage: frozenset(configs.stage_keys(stage, configs.CONFIG_FILE)) for stage in configs.STAGES}


@functools.lru_cache(maxsize=None)
def _merged(names: tuple[str, ...]) -> dict:
    return configs.merge_blocks(list(names), configs.CONFIG_FILE)


def _fail(spec: Spec, where: str, message: str):
    raise SpecError(f"{spec.path}: '{where}': {message}")


def _block_names(spec: Spec, flags: dict, where: str, inherited: tuple[str, ...]) -> tuple[str, ...]:
    """The `--configs` blocks in force for a job that gets `flags` after blocks that gave `inherited`."""
    if "configs" not in flags:
        return inherited
    value = flags["configs"]
    names = [str(v) for v in value] if isinstance(value, list) else str(value).split()
    names = tuple(names if "defaults" in names else ["defaults", *names])
    try:
        _merged(names)
    except UsageError as err:
        _fail(spec, f"{where}.configs", str(err))
    return names


def _key(spec: Spec, where: str, key: str, stages: tuple[str, ...], sets: dict) -> str:
    """The config key `key` stands for; an error unless one of `stages` reads it and the sweep leaves it to the spec."""
    key = configs.RENAMED.get(key, key)  # the stage takes the old name with a deprecation line
    if key in sets:
        _fail(spec, f"{where}.{key}", f"the sweep sets --{key} from {sets[key]}; remove it here")
    known = _known()
    if key not in known:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        _fail(spec, f"{where}.{key}", f"no stage has a flag --{key}" + (f"; did you mean '{close[0]}'?" if close else
                                                                          " (python <stage script> --help lists them)"))
    if not any(key in _stage_keys()[s] for s in stages):
        readers = [s for s, keys in _stage_keys().items() if key in keys]
        _fail(spec, f"{where}.{key}", f"--{key} is read by {', '.join(readers) or 'no stage'}, not by "
                                      f"{' / '.join(stages)} (the jobs this block feeds); move it to "
                                      f"{HOME.get(readers[0], 'another block') if readers else 'no block'}")
    return key


def _value(spec: Spec, where: str, value: Any, default: Any) -> Any:
    """`value` as the stage will parse it from the command line, typed from `default`."""
    if isinstance(value, dict):
        _fail(spec, where, f"a flag takes one value or a list, got a mapping {value!r}")
    try:
        return configs.parse_value(arg_text(value), default)
    except ValueError as err:
        _fail(spec, where, f"{err} (the flag's default is {default!r})")


def _typed(spec: Spec, where: str, flags: dict, stages: tuple[str, ...], names: tuple[str, ...],
           sets: dict = SET_BY_SWEEP) -> dict:
    """Check one flags block; its values as the stages will parse them."""
    defaults, out = _merged(names), {}
    for key, value in flags.items():
        if key == "configs":
            continue
        key = _key(spec, where, key, stages, sets)
        out[key] = _value(spec, f"{where}.{key}", value, defaults[key])
    return out


def _resolved(names: tuple[str, ...], *typed: dict) -> dict:
    """The config a job runs with: its blocks merged, then its flags blocks in command-line order."""
    config = dict(_merged(names))
    for values in typed:
        config.update(values)
    return config


def check(spec: Spec) -> None:
    """Every flags block of `spec` and every method; the first problem is a SpecError."""
    top = _block_names(spec, spec.flags, "flags", ("defaults",))
    shared = _typed(spec, "flags", spec.flags, TRAINING, top)
    teachers = {}
    for name, flags in spec.teachers.items():
        where = f"teachers.{name}.flags"
        names = _block_names(spec, flags, where, top)
        own = _typed(spec, where, flags, ("dreamer_pretrain.py",), names)
        teachers[name] = _resolved(names, for_stage("dreamer_pretrain.py", shared), own)
        _check_obs(spec, f"teachers.{name}", teachers[name])
    collected = _check_collect(spec)
    for name, config in teachers.items():
        _check_sources(spec, name, config, collected)
    student_names = _block_names(spec, spec.student_flags, "students.flags", top)
    students = _typed(spec, "students.flags", spec.student_flags, ("dreamer_distill.py",), student_names, STUDENT_SET)
    for method in spec.methods:
        where = f"students.methods.{method.name}.flags"
        names = _block_names(spec, method.flags, where, student_names)
        own = _typed(spec, where, method.flags, ("dreamer_distill.py",), names, STUDENT_SET)
        config = _resolved(names, for_stage("dreamer_distill.py", shared), students, own)
        _check_obs(spec, f"students.methods.{method.name}", config)
        _check_method(spec, method, config, teachers)
    _check_report(spec)


def _check_obs(spec: Spec, where: str, config: dict) -> None:
    if config["obs"] not in OBS_KEYS:
        _fail(spec, where, f"obs '{config['obs']}' is not one of {', '.join(OBS_KEYS)}")


def _check_method(spec: Spec, method: Method, config: dict, teachers: dict[str, dict]) -> None:
    """A student that distils has a teacher of the kind its method needs; one that does not, has none."""
    from methods import REGISTRY

    where = f"students.methods.{method.name}"
    if not config["use_distill"]:
        if method.teacher is not None:
            _fail(spec, where, f"names teacher '{method.teacher}' but use_distill is False, so its students would "
                               f"ignore it; set use_distill: True or remove `teacher`")
        return
    if method.teacher is None:
        _fail(spec, where, f"distils (use_distill True) but names no teacher; add `teacher:` (one of "
                           f"{', '.join(spec.teachers) or 'the teachers block, which is empty'}) or set use_distill: "
                           f"False")
    mode = config["distill_mode"]
    if mode not in REGISTRY:
        close = difflib.get_close_matches(str(mode), list(REGISTRY), n=1, cutoff=0.5)
        _fail(spec, f"{where}.flags.distill_mode", f"unknown method '{mode}'" + (f"; did you mean '{close[0]}'?" if
              close else "") + f" (registered: {', '.join(REGISTRY)})")
    for name in method.split or [method.teacher]:
        _check_teacher(spec, where, mode, name, teachers[name], config)


def _check_teacher(spec: Spec, where: str, mode: str, name: str, teacher: dict, config: dict) -> None:
    """Teacher `name` (its resolved config) has what method `mode` needs and reads what the students record."""
    from methods import REGISTRY

    kind = REGISTRY[mode]
    if kind.encoder is not None and teacher["teacher_encoder_mode"] != kind.encoder:
        _fail(spec, where, f"distill_mode '{mode}' needs a '{kind.encoder}' teacher, but teachers.{name} pretrains "
                           f"a '{teacher['teacher_encoder_mode']}' one; set teachers.{name}.flags."
                           f"teacher_encoder_mode: {kind.encoder} or name another teacher")
    for need in kind.needs:
        if not teacher[f"teacher_{need}_steps"] > 0:
            _fail(spec, where, f"distill_mode '{mode}' needs the teacher's behaviour {need}, which teachers.{name} "
                               f"does not fit; set teachers.{name}.flags.teacher_{need}_steps (e.g. 3000)")
    missing = [k for k in OBS_KEYS[teacher["obs"]] if k not in OBS_KEYS[config["obs"]]]
    if missing:
        _fail(spec, where, f"teachers.{name} reads {missing} (obs '{teacher['obs']}') but these students run with obs "
                           f"'{config['obs']}'; give both the same obs")


def _check_collect(spec: Spec) -> tuple[str, ...]:
    """collect.flags against collect_data.py's own flags and the config keys it reads; the observation keys the
    source data will hold."""
    from collection import cli

    if not spec.source_tasks:
        return ()
    parser = cli.parser()
    own = {a.dest for a in parser._actions if a.option_strings}
    args = []
    for key, value in spec.collect_flags.items():
        where = f"collect.flags.{key}"
        if key in COLLECT_SET:
            _fail(spec, where, f"the sweep sets --{key} from {COLLECT_SET[key]}; remove it here")
        if key in own:
            try:
                parser.parse_args([f"--{key}", arg_text(value)])
            except UsageError as err:
                _fail(spec, where, str(err))
            args += [f"--{key}", arg_text(value)]
    names = _block_names(spec, spec.collect_flags, "collect.flags", ("defaults",))
    _typed(spec, "collect.flags", {k: v for k, v in spec.collect_flags.items() if k not in own}, ("collect_data.py",),
           names, COLLECT_SET)
    parsed = parser.parse_args(args)
    try:
        cli.check(parsed)
    except UsageError as err:
        _fail(spec, "collect.flags", str(err))
    return OBS_KEYS[parsed.obs]


def _check_sources(spec: Spec, name: str, teacher: dict, collected: tuple[str, ...]) -> None:
    """The source data holds what the teacher reads (its observations; the raw state for behaviour teachers)."""
    need = list(OBS_KEYS[teacher["obs"]])
    if teacher["teacher_actor_steps"] > 0 or teacher["teacher_critic_steps"] > 0:
        need.append("state")
    missing = sorted({k for k in need if k not in collected})
    if missing:
        _fail(spec, f"teachers.{name}", f"reads {missing} from the source data, which collect.flags.obs does not "
                                        f"record; set collect.flags.obs: {'both' if len(set(need)) > 1 else need[0]}")


def _check_report(spec: Spec) -> None:
    """`report` against results.py's own flags."""
    from analysis import cli

    parser = cli.parser()
    own = {a.dest for a in parser._actions if a.option_strings} - {"help"}
    args = []
    for key, value in spec.report_flags.items():
        where = f"report.{key}"
        if key in REPORT_SET:
            _fail(spec, where, f"the sweep sets {key} from {REPORT_SET[key]}; remove it here")
        if key not in own:
            close = difflib.get_close_matches(str(key), sorted(own), n=1, cutoff=0.5)
            _fail(spec, where, "results.py has no flag --" + str(key) + (f"; did you mean '{close[0]}'?" if close else
                                                                         f" (it has {', '.join(sorted(own))})"))
        try:
            parser.parse_args(["runs", "--out", "report", f"--{key}", arg_text(value)])
        except UsageError as err:
            _fail(spec, where, str(err))
        args += [f"--{key}", arg_text(value)]
    try:
        cli.check(parser.parse_args(["runs", "--out", "report", *args]))
    except UsageError as err:
        _fail(spec, "report", str(err))
