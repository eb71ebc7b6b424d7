"""Consolidation: success per source task of the teacher's multi-task behaviour actor vs the scripted
experts that taught it (PolyTask's table), in the real env, printed and written as one JSON object.

    python bench/consolidation.py --out bench/consolidation.json [--episodes 40 --eval_episodes 20]

Collects state-mode source datasets of the six source tasks of `metaworld_teacher_moe_pretrain`
(noisy experts: noise 0.1, 10% random episodes), pretrains a teacher with `--teacher_actor_steps` (the
world model only briefly: the behaviour actor reads the raw state and does not depend on it), then runs
`training.consolidation.evaluate_teacher_actor` with the same env seeds for actor and expert. Success
rates come with 95% Clopper-Pearson intervals.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import emit, machine  # noqa: E402

TASKS = ["metaworld_reach", "metaworld_push", "metaworld_pick_place", "metaworld_door_open",
         "metaworld_drawer_open", "metaworld_button_press"]


def interval(successes: float, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(int(round(successes * n)), n).proportion_ci(0.95)
    return [round(ci.low, 3), round(ci.high, 3)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="logs/consolidation")
    parser.add_argument("--episodes", type=int, default=40, help="source episodes per task")
    parser.add_argument("--eval_episodes", type=int, default=20)
    parser.add_argument("--actor_steps", type=int, default=3000)
    parser.add_argument("--pretrain_iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    import envs

    envs.headless_gl()
    import torch

    torch.set_num_threads(1)
    import collect_data
    import dreamer_pretrain
    from envs import short_name
    from training.consolidation import evaluate_teacher_actor

    root = pathlib.Path(args.root)
    common = ["--configs", "defaults", "metaworld_state", "--progress", "False", "--threads", "1"]
    timings = {}
    start = time.time()
    collect_data.main([*common, "--tasks", ",".join(TASKS), "--episodes", str(args.episodes), "--obs", "state",
                       "--noise", "0.1", "--random_frac", "0.1", "--workers", "1", "--out", str(root / "data"),
                       "--seed", str(args.seed)])
    timings["collect_s"] = round(time.time() - start, 1)
    dirs = [str(root / "data" / short_name(t)) for t in TASKS]
    teacher = root / f"teacher_a{args.actor_steps}_s{args.seed}"
    start = time.time()
    code = dreamer_pretrain.main([*common, "--source_tasks", ",".join(TASKS), "--source_task_dirs", ",".join(dirs),
                                  "--pretrain_iterations", str(args.pretrain_iterations), "--teacher_actor_steps",
                                  str(args.actor_steps), "--logdir", str(teacher), 
                                  "--seed", str(args.seed)])
    assert code == 0
    timings["pretrain_and_fit_s"] = round(time.time() - start, 1)
    start = time.time()
    results = evaluate_teacher_actor(teacher / "teacher.pt", args.eval_episodes, args.seed)
    timings["evaluate_s"] = round(time.time() - start, 1)
    for r in results.values():
        for who in ("actor", "expert"):
            r[who]["success_any_ci95"] = interval(r[who]["success_any"], r[who]["episodes"])
    emit({"benchmark": "consolidation", "machine": machine(), "settings": vars(args), "timings": timings,
          "results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
