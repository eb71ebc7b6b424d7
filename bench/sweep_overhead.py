"""Sweep throughput and Ray's per-job overhead at a fixed tiny budget (debug-sized state students).

  python bench/sweep_overhead.py --out bench/sweep_overhead.json

Measures, side by side in one run: one student command run directly vs the same command as a one-job
sweep on a local Ray (overhead = difference, Ray's start-up reported apart), and jobs per hour for `--jobs`
students with 1 vs 2 concurrent jobs (local Ray with 1 vs 2 CPUs, one CPU per job).
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402

BUDGET = ["--configs", "defaults", "metaworld", "quickstart", "debug", "--progress", "False", "--threads", "1",
          "--steps", "160", "--eval_every", "80", "--use_distill", "False", "--task", "metaworld_drawer_close"]


def jobs(root: pathlib.Path, n: int) -> list:
    from sweeps.jobs import Job

    return [Job(f"students/seed{k}", [sys.executable, "dreamer_distill.py", *BUDGET, "--seed", str(k),
                                      "--logdir", str(root / f"students/seed{k}")], root / f"students/seed{k}", [], 1, 0)
            for k in range(n)]


def sweep(batch: list, cpus: int) -> dict:
    import io

    import ray

    from sweeps import runner
    from sweeps.progress import Progress

    start = time.time()
    runner.init_ray(None, cpus, 0)
    ready = time.time()
    outcomes = runner.run(batch, Progress(len(batch), stream=io.StringIO()))
    end = time.time()
    ray.shutdown()
    assert all(o.state == "done" for o in outcomes.values()), {k: o.result for k, o in outcomes.items()}
    return {"ray_init_s": ready - start, "run_s": end - ready,
            "job_s": [o.result["seconds"] for o in outcomes.values()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="students per throughput measurement")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = {"machine": machine(), "budget": " ".join(BUDGET)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        start = time.time()
        subprocess.run([sys.executable, "dreamer_distill.py", *BUDGET, "--seed", "0", "--logdir", str(tmp / "direct")],
                       cwd=ROOT, check=True, capture_output=True)
        direct = time.time() - start
        one = sweep(jobs(tmp / "one", 1), 1)
        result["overhead"] = {"direct_s": direct, "ray_job_run_s": one["run_s"], "ray_init_s": one["ray_init_s"],
                              "per_job_overhead_s": one["run_s"] - direct}
        for cpus in (1, 2):
            timing = sweep(jobs(tmp / f"c{cpus}", args.jobs), cpus)
            result[f"concurrent_{cpus}"] = {**timing, "jobs": args.jobs,
                                            "jobs_per_hour": args.jobs / timing["run_s"] * 3600}
    result["speedup_2_vs_1"] = result["concurrent_2"]["jobs_per_hour"] / result["concurrent_1"]["jobs_per_hour"]
    result["machine_after"] = machine()
    emit(result, args.out)


if __name__ == "__main__":
    main()
