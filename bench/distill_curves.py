"""Distilled vs plain students: eval success and world-model loss curves from the runs' metrics.jsonl.

    python bench/distill_curves.py --group distilled 'logs/exp/comet_s*' --group plain 'logs/exp/plain_s*' \
        --png docs/distill_curves.png

Prints one JSON object: per group and env step, the mean and standard deviation over seeds of
`eval/success_any` (success at any step of the episode) and `eval/success_final`, and of the
world-model loss `train/model_loss` (the student's own loss, distillation term excluded) and
`train/reward`; plus each group's final values and area under the success curve. Only steps that every
run of a group reached are aggregated, so unfinished runs do not bias the means.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import pathlib
import sys

import numpy as np

EVAL_KEYS = ("eval/success_any", "eval/success_final", "eval/return")
TRAIN_KEYS = ("train/model_loss", "train/reward", "train/kl", "train/state", "train/distill/loss")


def read_run(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} from a run's metrics.jsonl (events skipped, last value per step kept)."""
    series: dict[str, dict[int, float]] = {}
    path = logdir / "metrics.jsonl"
    if not path.is_file():
        return series
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if "step" not in record or "event" in record:
            continue
        for key in (*EVAL_KEYS, *TRAIN_KEYS):
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, {})[int(record["step"])] = float(value)
    return series


def prune_events(logdir: pathlib.Path) -> list[dict]:
    path = logdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("event") == "prune"]


def aggregate(runs: list[dict], key: str) -> dict:
    """Mean/std over runs at the steps all runs have for `key`."""
    present = [r[key] for r in runs if key in r]
    if len(present) < len(runs) or not present:
        return {}
    steps = sorted(set.intersection(*(set(s) for s in present)))
    values = np.array([[s[step] for step in steps] for s in present])  # (seeds, steps)
    return {"steps": steps, "mean": values.mean(0).round(4).tolist(), "std": values.std(0).round(4).tolist(),
            "per_seed": values.round(4).tolist()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs=2, action="append", metavar=("NAME", "GLOB"), required=True,
                        help="a group name and a glob of run folders (one per seed)")
    parser.add_argument("--png", default="", help="write the side-by-side plot here")
    args = parser.parse_args(argv)
    result = {"success_rule": "eval/success_any: info['success'] true at any step of the episode", "groups": {}}
    for name, pattern in args.group:
        dirs = sorted(pathlib.Path(p) for p in glob.glob(pattern) if pathlib.Path(p).is_dir())
        runs = [read_run(d) for d in dirs]
        group = {"runs": [str(d) for d in dirs]}
        for key in (*EVAL_KEYS, *TRAIN_KEYS):
            agg = aggregate(runs, key)
            if agg:
                group[key] = agg
        success = group.get("eval/success_any")
        if success:
            group["final_success_any"] = {"step": success["steps"][-1], "mean": success["mean"][-1],
                                          "std": success["std"][-1]}
            group["mean_success_any_over_evals"] = round(float(np.mean(success["mean"])), 4)
        events = {str(d): [(e["step"], e["task"], round(e["ema"], 4)) for e in prune_events(d)] for d in dirs}
        if any(events.values()):
            group["prune_events"] = events
        result["groups"][name] = group
    print(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png)
    return result


def plot(result: dict, path: str) -> None:
    """Three panels: eval success (any step), world-model loss and its reward term; mean over seeds with
    a band of +- one standard error of that mean (success bands clipped to [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("eval/success_any", "eval success (any step)"), ("train/model_loss", "world-model loss"),
              ("train/reward", "reward NLL (world model)")]
    for ax, (key, title) in zip(axes, panels):
        for name, group in result["groups"].items():
            if key not in group:
                continue
            steps, mean, std = (np.array(group[key][k]) for k in ("steps", "mean", "std"))
            n = len(group[key]["per_seed"])
            sem = std * np.sqrt(n / max(n - 1, 1)) / np.sqrt(n)  # std is the population std over seeds
            low, high = mean - sem, mean + sem
            if key.startswith("eval/success"):
                low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
            ax.plot(steps, mean, label=f"{name} (n={n})")
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(title + " (mean ± s.e.)")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
