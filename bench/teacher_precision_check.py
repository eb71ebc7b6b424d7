"""Does a pixel teacher learn the same with `--precision 16` (bf16 on a CPU with native bf16) as in float32?

    python bench/teacher_precision_check.py [--updates 150] [--seeds 0] [--out f.json]

Collects a small pixel dataset of three source tasks (scripted experts, `collect_data.py`), then pretrains
one teacher per precision and seed on it (`dreamer_pretrain.py`, same seed, same batches: the replay
sampling does not depend on the precision) and compares their loss curves from `metrics.jsonl`: per logged
window the total loss, image loss and KL of both, and the relative gap of the last window. A short run
says whether bf16 changes early learning, not how a full pretraining ends; the budget is in the output.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = ("metaworld_reach", "metaworld_drawer_close", "metaworld_door_open")
KEYS = ("train/model_loss", "train/image", "train/kl_value", "train/reward")


def run(cmd: list[str]) -> None:
    out = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{out.stderr[-3000:]}")


def curve(logdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], **{k: round(r[k], 4) for k in KEYS if k in r}} for r in rows if "train/model_loss" in r]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--log_every", type=int, default=25)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per source task")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.common import emit, machine
    from envs import short_name

    start = time.time()
    result = {"machine": machine(), "tasks": list(TASKS), "updates": args.updates, "episodes": args.episodes,
              "config": "defaults metaworld metaworld_pixel_small, K = N = 3, batch 8x32, one thread", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = pathlib.Path(tmp) / "data"
        run(["collect_data.py", "--tasks", ",".join(TASKS), "--episodes", str(args.episodes), "--obs", "pixel",
             "--workers", "1", "--out", str(data), "--progress", "False"])
        dirs = ",".join(str(data / short_name(t)) for t in TASKS)
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            for precision in (32, 16):
                logdir = pathlib.Path(tmp) / f"teacher_p{precision}_s{seed}"
                run(["dreamer_pretrain.py", "--configs", "defaults", "metaworld", "metaworld_pixel_small",
                     "--source_tasks", ",".join(TASKS), "--source_task_dirs", dirs, "--n_experts", "3",
                     "--batch_size", "8", "--batch_length", "32", "--pretrain_iterations", str(args.updates),
                     "--log_every", str(args.log_every), "--checkpoint_every", str(args.updates),
                     "--precision", str(precision), "--seed", str(seed), "--threads", "1", "--progress", "False",
                     "--logdir", str(logdir)])
                result["runs"][f"p{precision}_s{seed}"] = curve(logdir)
    gaps = {}
    for name, rows in result["runs"].items():
        if name.startswith("p16"):
            base = result["runs"][name.replace("p16", "p32")]
            gaps[name] = {k: round((rows[-1][k] - base[-1][k]) / abs(base[-1][k]), 4) for k in KEYS
                          if k in rows[-1] and k in base[-1] and base[-1][k]}
    result["last_window_relative_gap_bf16_vs_fp32"] = gaps
    result["wall_s"] = round(time.time() - start, 1)
    result["load_avg_end"] = machine()["load_avg"]
    return emit(result, args.out)


if __name__ == "__main__":
    main()
