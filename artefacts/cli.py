"""The artefact commands: `python -m artefacts evaluate | quantize | export ARGS` (console commands comet-evaluate,
comet-quantize, comet-export). Each `<command>(argv)` parses its flags, does the work and raises; `main(argv)` maps
the outcome to an exit code (0 done, 2 unusable command line or checkpoint, with one error line)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import tools

EVALUATE = """Evaluate a trained student (or a `quantize` variant of its policy) without training.

    python -m artefacts evaluate --checkpoint runs/reach/latest.pt --episodes 20 --seed 0 [--task metaworld_reach]
        [--out runs/reach/eval_seed0] [--logdir runs/reach/eval_tb] [--envs 1] [--video_episodes 3]

Rebuilds the agent from the config stored in the checkpoint and runs seeded episodes with the mode action.
Writes <out>/episodes.csv (return, length, success at any step / at the last step per episode),
<out>/summary.json (means, standard errors, the protocol) and <out>/episode<k>.mp4 for the first
--video_episodes episodes (rendered for state agents too; a GIF where imageio-ffmpeg is missing); with --logdir
the same numbers and videos go to TensorBoard.
"""

QUANTIZE = """Post-training quantization of a student's acting policy (encoder + RSSM filter step + actor).

    python -m artefacts quantize --checkpoint runs/reach/latest.pt [--out runs/reach/quantized] [--episodes 20]
        [--variants fp32,bf16,fp16,int8_wo,int8_dyn] [--compile] [--calls 200] [--seed 0] [--threads 1]

Writes <out>/<variant>.pt for each variant (each accepted by `evaluate --checkpoint`), <out>/table.json and
<out>/table.md: size on disk, parameter bytes, latency per action at batch 1 (wall median, p90, and median
thread CPU time, which other processes' load barely moves), throughput at batch 64 (by wall and by CPU time),
eager and, with --compile, torch.compile'd (fp32/int8; compiling takes minutes on a CPU, the eager timings a few
seconds), all variants timed in alternating blocks; largest action difference to
fp32 on recorded observations; eval success over --episodes seeded episodes with its difference to fp32 and
standard error. Which layers stay float, and why: artefacts/variants.py.
"""

EXPORT = """Export a student's acting policy (encoder + one RSSM filter step + actor) as a self-contained .pt2 file.

    python -m artefacts export --checkpoint runs/reach/latest.pt [--out runs/reach/policy.pt2]

The file is a `torch.export` program at batch 1 that plain torch loads without this repository; how to call
it: artefacts/export.py (and docs/architecture.md, "Artefacts").
"""


def evaluate(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="comet-evaluate", description=EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt or a `quantize` variant")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="", help="evaluate on another task (default: the checkpoint's)")
    parser.add_argument("--envs", type=int, default=1, help="eval envs stepped together")
    parser.add_argument("--goal_set", type=int, default=None,
                        help="start the episodes from fixed goal set N's first evaluation (a study's --eval_goal_seed; "
                             "docs/evaluation.md), the same whatever --seed; default: positions drawn by --seed")
    parser.add_argument("--out", default="", help="output folder (default: <checkpoint dir>/eval_seed<seed>)")
    parser.add_argument("--logdir", default="", help="also write the numbers to TensorBoard here")
    parser.add_argument("--video_episodes", type=int, default=3, help="film this many of the first episodes (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from artefacts import evaluation, student

    torch.set_num_threads(args.threads)
    if args.episodes < 1:
        raise student.ArtefactError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video_episodes < 0:
        raise student.ArtefactError(f"--video_episodes must be >= 0, got {args.video_episodes}")
    if args.goal_set is not None and args.goal_set < 0:
        raise student.ArtefactError(f"--goal_set must be >= 0, got {args.goal_set}")
    payload = student.read(args.checkpoint)
    eps, videos, protocol = evaluation.run(payload, args.episodes, args.seed, args.task or None, args.envs,
                                           film=args.video_episodes, goal_set=args.goal_set)
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent / f"eval_seed{args.seed}")
    summary = evaluation.write(out, args.checkpoint, eps, videos, protocol, args.logdir or None)
    print(f"{args.checkpoint}: {args.episodes} episode(s) on {protocol['task']}: success (any step) "
          f"{evaluation.with_error(summary['success_any']['mean'], summary['success_any']['se'])}, success (last step) "
          f"{summary['success_final']['mean']:.2f}, return {summary['return']['mean']:.1f} -> {out}", flush=True)


def quantize(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="comet-quantize", description=QUANTIZE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt")
    parser.add_argument("--out", default="", help="output folder (default: <checkpoint dir>/quantized)")
    parser.add_argument("--variants", default="fp32,bf16,fp16,int8_wo,int8_dyn")
    parser.add_argument("--episodes", type=int, default=20, help="eval episodes per variant (0: skip evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=200,
                        help="timed calls per batch-1 latency (a quarter of that at batch 64), interleaved across variants")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd fp32 / int8 (minutes on a CPU)")
    parser.add_argument("--no_compile", action="store_true", help=argparse.SUPPRESS)  # the default since --compile
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from artefacts import student, table, variants

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in variants.VARIANTS]
    if unknown or not names or names[0] != "fp32":
        raise student.ArtefactError(f"--variants must start with fp32 (the reference) and name only "
                                    f"{', '.join(variants.VARIANTS)}; got {args.variants}")
    if args.no_compile:
        tools.deprecated("quantize --no_compile", "nothing: compiled timings are off unless --compile is given")
    if args.calls < 10:
        raise student.ArtefactError(f"--calls must be >= 10, got {args.calls}")
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent / "quantized")
    rows = table.run(args.checkpoint, out, names, args.episodes, args.seed, args.compile, args.calls)
    record = json.dumps({"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
                         "threads": args.threads, "compiled": args.compile, "rows": rows}, indent=1) + "\n"
    md = table.markdown(rows)
    tools.atomic_write(out / "table.json", lambda f: f.write(record.encode()))
    tools.atomic_write(out / "table.md", lambda f: f.write((md + "\n").encode()))
    print(md, flush=True)


def export(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="comet-export", description=EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt")
    parser.add_argument("--out", default="", help="default: policy.pt2 next to the checkpoint")
    args = parser.parse_args(argv)
    from artefacts import export, student, variants

    payload = student.read(args.checkpoint)
    if payload.get("kind") == student.VARIANT_KIND:
        raise student.ArtefactError(f"--checkpoint {args.checkpoint}: a `quantize` variant; export takes the "
                                    f"student's latest.pt")
    agent = student.build_agent(payload)
    out = export.export(variants.make(agent, "fp32"), agent.wm.obs_shapes,
                        args.out or pathlib.Path(args.checkpoint).parent / "policy.pt2")
    print(f"exported the acting policy of {args.checkpoint} to {out}", flush=True)


COMMANDS = {"evaluate": evaluate, "quantize": quantize, "export": export}


def main(argv=None) -> int:
    """`main(["evaluate", ...])`: run one artefact command; the exit code as the stage scripts give it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = " | ".join(COMMANDS)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: python -m artefacts {names} [--help | ARGS]\n\n" + __doc__)
            return tools.EXIT_OK
        print(f"artefacts: error: name a command first: python -m artefacts {names} ARGS", file=sys.stderr)
        return tools.EXIT_USAGE
    return tools.run_main(f"comet-{argv[0]}", COMMANDS[argv[0]], argv[1:])


def evaluate_main() -> int:
    return main(["evaluate", *sys.argv[1:]])


def quantize_main() -> int:
    return main(["quantize", *sys.argv[1:]])


def export_main() -> int:
    return main(["export", *sys.argv[1:]])
