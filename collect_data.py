"""Stage 0: source-task datasets from Meta-World's scripted expert policies.

    python collect_data.py --tasks metaworld_reach,metaworld_door_open --episodes 100 --obs pixel \
        --noise 0.1 --random_frac 0.1 --workers 2 --out data --seed 0

Writes one folder per task (named without the `metaworld_` prefix, e.g. data/door_open) holding one `.npz` per
episode and a `manifest.json` with the settings and success rates. Episode i of a task is fully determined by
(seed, task, i) and has a fixed file name, so a re-run only adds the missing episodes and the same seed always
gives the same data. Any other config key (--time_limit, --action_repeat, --size, --render_fast, --configs ...)
is read through configs.load_config. The collection itself is the `collection` package.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import tools
import configs
import envs
from collection import cli
from collection.pool import collect


def parse_args(argv=None) -> tuple[argparse.Namespace, configs.Config]:
    """Collection flags via argparse; every remaining flag goes to configs.load_config (env settings)."""
    parser = cli.parser()
    args, rest = parser.parse_known_args(argv)
    actions = [a for a in parser._actions if a.option_strings]
    config = configs.load_config(rest, description=__doc__.split("\n\n")[0], extra_flags=[a.option_strings[0] for a in actions],
                                 stage="collect_data.py",
                                 own_help=("collection", {a.dest: (a.help or "", a.default) for a in actions}))
    cli.check(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or list(config.source_tasks)
    if not tasks:
        raise tools.UsageError("no tasks: pass --tasks metaworld_a,metaworld_b or a config block with source_tasks")
    try:
        args.tasks = envs.canonical_tasks(tasks)  # one stored spelling, whichever form was typed
    except envs.TaskNameError as err:
        raise tools.UsageError(f"--tasks: {err}") from None
    config.obs, config.seed = args.obs, args.seed
    return args, config


def run(argv=None) -> dict[str, dict]:
    """Parse flags, collect, print one summary line per task; returns task -> manifest."""
    args, config = parse_args(argv)
    manifests = collect(args, config)
    for task, manifest in manifests.items():
        print(f"{task}: {manifest['episodes']} episodes, {manifest['steps']} steps, "
              f"success any {manifest['success_rate_any']:.2f} / final {manifest['success_rate_final']:.2f} "
              f"-> {pathlib.Path(args.out) / envs.short_name(task)}")
    return manifests


def main(argv=None) -> int:
    """Exit code: 0 done, 1 a collection worker failed, 2 unusable command line or folder, 130 interrupted."""
    return tools.run_main("collect_data", run, argv)


if __name__ == "__main__":
    sys.exit(main())
