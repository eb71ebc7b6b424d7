"""Evaluate a trained student (or a quantize.py variant of its policy) without training.

    python evaluate.py --checkpoint runs/reach/latest.pt --episodes 20 --seed 0 [--task metaworld_reach]
        [--out runs/reach/eval_seed0] [--logdir runs/reach/eval_tb] [--envs 1] [--video_episodes 3]

Rebuilds the agent from the config stored in the checkpoint and runs seeded episodes with the mode action.
Writes <out>/episodes.csv (return, length, success at any step / at the last step per episode),
<out>/summary.json (means, standard errors, the protocol) and <out>/episode<k>.mp4 for the first
--video_episodes episodes (rendered for state agents too; a GIF where imageio-ffmpeg is missing); with --logdir
the same numbers and videos go to TensorBoard.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt or a quantize.py variant")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="", help="evaluate on another task (default: the checkpoint's)")
    parser.add_argument("--envs", type=int, default=1, help="eval envs stepped together")
    parser.add_argument("--out", default="", help="output folder (default: <checkpoint dir>/eval_seed<seed>)")
    parser.add_argument("--logdir", default="", help="also write the numbers to TensorBoard here")
    parser.add_argument("--video_episodes", type=int, default=3, help="film this many of the first episodes (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from artefacts import evaluation, student

    torch.set_num_threads(args.threads)
    if args.episodes < 1:
        raise student.ArtefactError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video_episodes < 0:
        raise student.ArtefactError(f"--video_episodes must be >= 0, got {args.video_episodes}")
    payload = student.read(args.checkpoint)
    eps, videos, protocol = evaluation.run(payload, args.episodes, args.seed, args.task or None, args.envs,
                                           film=args.video_episodes)
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent / f"eval_seed{args.seed}")
    summary = evaluation.write(out, args.checkpoint, eps, videos, protocol, args.logdir or None)
    print(f"{args.checkpoint}: {args.episodes} episodes on {protocol['task']}: success (any step) "
          f"{summary['success_any']['mean']:.2f} ± {summary['success_any']['se']:.2f}, success (last step) "
          f"{summary['success_final']['mean']:.2f}, return {summary['return']['mean']:.1f} -> {out}", flush=True)


def main(argv=None) -> int:
    """Exit code: 0 done, 2 unusable command line or checkpoint (one error line)."""
    import cli

    return cli.run_main("evaluate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
