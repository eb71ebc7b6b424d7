"""Does distillation change what the student's world model learns? A controlled offline check without RL.

    python bench/distill_offline.py --data data/target_task --teacher logs/teacher/teacher.pt \
        --arms none,w1,w10,auto,prior@auto --seeds 0,1,2 --updates 300 --eval_every 100 \
        --configs defaults metaworld metaworld_pixel_cpu --distill_share 0.1 ...

Online runs mix two sources of variance (the world model and the policy that collects its data). Here every
student world model trains on the same fixed episodes of the target task (`Agent.train_world_model`, the
student's own world-model update, distiller included), with the arm as the only difference, and is scored
every `--eval_every` updates on all windows of the same held-out episodes: the world-model loss and its parts
(KL, image or state NLL, reward NLL; all without the distillation term) and the state probe
(training/probe.py: cross-fitted ridge R^2 of the true 39-d state from the posterior-mean latent on the
held-out episodes, which therefore need a `state`: collect pixel data with `--obs both`). The teacher's probe
(per active view) is taken once, at the end. The gradient share r of the distillation term over the
student's encoder + RSSM (models/grad_share.py) is recorded at every measured update (`--grad_share_every`),
with the coefficient in force (`distill/scale`: what `auto` settled on).

Arms (`--arms`, comma list; `--weights 0,1,10` is the older spelling of none,w1,w10):
  none             no distiller
  w<N>             comet at distill_weight N (w1, w1000, w0.5)
  auto             comet at distill_weight auto (held at distill_share)
  <kind>@<weight>  comet at weight N or auto with one change: prior / open_loop (distill_target), random
                   (teacher_random_seed 0: the random-teacher control), shuffled (shuffle_views True); several
                   kinds join with '+' (prior+random@auto: the random-teacher control of the prior target)
Any config key of the command line (after the script's own flags) applies to every arm.
With `--records DIR` each finished run is written there at once (`<arm>_seed<s>.json`, with the settings it
ran with) and a later invocation with the same settings reads it instead of training again: a long check
survives an interruption, and arms can run in several processes (one per arm subset) before one invocation
with every arm reports them all. Prints one JSON object (and writes it to --out).

Shape legend: docs/architecture.md (B batch, T time, L episode length).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import configs  # noqa: E402
import tools  # noqa: E402
from bench.common import emit, machine  # noqa: E402

A = 4
KINDS = {"prior": {"distill_target": "prior"}, "open_loop": {"distill_target": "open_loop"},
         "random": {"teacher_random_seed": 0}, "shuffled": {"shuffle_views": True}}
TRAIN_KEYS = ("distill/loss", "distill/scale", "distill/relevance_entropy", "distill/active_tasks")


def arm_overrides(arm: str) -> dict | None:
    """The config changes of an arm (None: no distiller); a malformed arm is a UsageError naming the forms."""
    if arm == "none":
        return None
    if arm == "auto":
        return {"distill_weight": "auto"}
    match = re.fullmatch(r"w([0-9.eE+-]+)", arm)
    try:
        if match:
            return {"distill_weight": str(float(match.group(1)))}
    except ValueError:
        pass
    kinds, _, weight = arm.partition("@")
    if weight and kinds and all(kind in KINDS for kind in kinds.split("+")):
        base = arm_overrides("auto" if weight == "auto" else f"w{weight}")
        if base is not None:
            for kind in kinds.split("+"):
                base.update(KINDS[kind])
            return base
    raise tools.UsageError(f"--arms: cannot read '{arm}'; use none, w<N>, auto or <kind>[+<kind>]@<N|auto> with "
                           f"kinds among {', '.join(KINDS)}")


def windows(episodes: list[dict], length: int, per_batch: int = 16) -> list[dict]:
    """Every held-out episode cut into consecutive non-overlapping windows of `length`, batched:
    a fixed evaluation set that covers all held-out steps (up to each episode's remainder)."""
    cuts = [{k: v[i:i + length] for k, v in ep.items()} for ep in episodes
            for i in range(0, len(ep["action"]) - length + 1, length)]
    return [{k: np.stack([c[k] for c in cuts[j:j + per_batch]]) for k in cuts[0]}
            for j in range(0, len(cuts), per_batch)]


def split_episodes(directory: str, held_out: float, seed: int):
    """Episodes of `directory` split into (train, held-out) lists, the split fixed by `seed`."""
    from replay import load_dir

    episodes = list(load_dir(pathlib.Path(directory)).values())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(episodes))
    n_held = max(2, int(round(held_out * len(episodes))))
    return [episodes[i] for i in order[n_held:]], [episodes[i] for i in order[:n_held]]


@torch.no_grad()
def score(wm, batches: list[dict], held: list[dict]) -> dict:
    """Held-out loss parts over fixed batches (weighted by batch size) and the student's state probe."""
    from training.probe import probe

    keys = ("model_loss", "kl_value", *wm.decoders, "reward")
    sums = dict.fromkeys(keys, 0.0)
    total = sum(len(b["action"]) for b in batches)
    for batch in batches:
        _, metrics, _ = wm.loss(wm.preprocess(batch))
        for key in keys:
            sums[key] += float(metrics[key]) * len(batch["action"]) / total
    return {**sums, "probe_r2": probe(wm, held).get("probe/student_r2", float("nan"))}


def build(config, overrides: dict | None, teacher_path: str):
    """The student Agent of an arm, with its comet distiller (teacher loaded afresh: an arm may re-initialise it)."""
    from methods import build_method
    from models.agent import Agent
    from models.teacher_io import load_teacher

    c = {**config, **(overrides or {})}
    agent = Agent(c, None, A, "cpu")
    if overrides is not None:
        teacher, _ = load_teacher(teacher_path, "cpu")
        agent.attach_distiller(build_method(c, teacher, agent.wm.feat_size, verbose=False))
    return agent


def run(config, train, held, arm: str, seed: int, teacher_path: str, updates: int, eval_every: int) -> dict:
    """Train one student world model of `arm` on `train`; return its curves, gradient shares and probes."""
    from models import grad_share
    from replay import Replay
    from training.probe import probe

    tools.set_seed(seed)
    agent = build(config, arm_overrides(arm), teacher_path)
    wm, distiller = agent.wm, agent.distiller
    replay = Replay(train, config["batch_size"], config["batch_length"], seed=seed)
    held_batches = windows(held, config["batch_length"])  # the same held-out windows for every run
    curve, shares, pending = [], [], {}
    start = time.process_time()
    for update in range(updates + 1):
        if update % eval_every == 0:
            point = {"update": update, **score(wm, held_batches, held)}
            point.update({f"train/{k}": float(np.mean(v)) for k, v in pending.items()})
            curve.append({k: round(v, 5) if isinstance(v, float) else v for k, v in point.items()})
            pending = {}
            print(f"[offline] {arm} seed={seed} {curve[-1]}", file=sys.stderr, flush=True)
        if update == updates:
            break
        _, _, metrics = agent.train_world_model(replay.sample(), update)
        for key in TRAIN_KEYS:
            if key in metrics:
                pending.setdefault(key, []).append(float(metrics[key]))
        if grad_share.SHARE in metrics:
            shares.append({"update": update, "r": round(float(metrics[grad_share.SHARE]), 6),
                           "scale": round(float(metrics["distill/scale"]), 6)})
    out = {"arm": arm, "seed": seed, "curve": curve, "shares": shares, "cpu_s": round(time.process_time() - start, 1)}
    if distiller is not None:
        out["active_tasks_at_end"] = distiller.active_tasks
        out["teacher_probe"] = {k: round(v, 4) for k, v in
                                probe(wm, held, distiller.teacher, distiller.active_ids).items() if "teacher" in k}
    return out


def same_settings(a: dict, b: dict) -> bool:
    """Whether two runs' settings agree: every entry, and every config key both know (a key that the code of
    one side did not have yet cannot have changed what that side ran)."""
    rest = lambda s: {k: v for k, v in s.items() if k != "config"}
    shared = a["config"].keys() & b["config"].keys()
    return rest(a) == rest(b) and all(a["config"][k] == b["config"][k] for k in shared)


def recorded_run(records: pathlib.Path | None, settings: dict, config, train, held, arm: str, seed: int,
                 teacher_path: str, updates: int, eval_every: int) -> dict:
    """`run`, or its record in `records` when one exists with the same settings (a UsageError when it differs)."""
    path = records / f"{arm.replace('@', '_at_')}_seed{seed}.json" if records is not None else None
    if path is not None and path.is_file():
        record = json.loads(path.read_text())
        if not same_settings(record["settings"], settings):
            raise tools.UsageError(f"{path}: recorded with other settings than this command's; use another --records "
                                   f"folder or remove the file")
        print(f"[offline] {arm} seed={seed}: read from {path}", file=sys.stderr, flush=True)
        return record["run"]
    out = run(config, train, held, arm, seed, teacher_path, updates, eval_every)
    if path is not None:
        text = json.dumps({"settings": settings, "run": out}).encode()
        tools.atomic_write(path, lambda f: f.write(text))
    return out


def share_summary(runs: list[dict]) -> dict:
    """Per arm: geometric means over seeds of r and of the coefficient, over the whole run and its last third."""
    if not runs[0]["shares"]:
        return {}
    updates = max(s["update"] for s in runs[0]["shares"])
    geo = lambda values: round(float(np.exp(np.mean(np.log(np.maximum(values, 1e-12))))), 6)
    out = {}
    for part, low in (("all", 0), ("last_third", 2 * updates / 3)):
        picked = [s for r in runs for s in r["shares"] if s["update"] >= low]
        out[f"r_{part}"] = geo([s["r"] for s in picked])
        out[f"scale_{part}"] = geo([s["scale"] for s in picked])
    out["r_per_seed_last_third"] = [geo([s["r"] for s in r["shares"] if s["update"] >= 2 * updates / 3]) for r in runs]
    return out


def summarise(runs: list[dict]) -> dict:
    """Per arm: final held-out values (mean, std over seeds), the mean over the evaluations after update 0, the
    mean curves, the gradient shares and the teacher's probe."""
    summary = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        group = [r for r in runs if r["arm"] == arm]
        keys = [k for k in group[0]["curve"][-1] if k != "update" and not k.startswith("train/")]
        final = {k: [r["curve"][-1][k] for r in group] for k in keys}
        entry = {k: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4),
                     "per_seed": [round(float(x), 4) for x in v]} for k, v in final.items()}
        entry["mean_over_evals_after_0"] = {k: round(float(np.mean([np.mean([p[k] for p in r["curve"][1:]])
                                                                     for r in group])), 4) for k in keys}
        curve_keys = sorted({k for r in group for p in r["curve"] for k in p if k != "update"})
        entry["curve_mean"] = {k: [round(float(np.mean([r["curve"][i][k] for r in group if k in r["curve"][i]])), 4)
                                   if any(k in r["curve"][i] for r in group) else None
                                   for i in range(len(group[0]["curve"]))] for k in curve_keys}
        entry["shares"] = share_summary(group)
        if "teacher_probe" in group[0]:  # per view over the seeds that kept it active, and the mean over views
            views = sorted({k for r in group for k in r["teacher_probe"]})
            entry["teacher_probe"] = {k: round(float(np.mean([r["teacher_probe"][k] for r in group
                                                              if k in r["teacher_probe"]])), 4) for k in views}
        summary[arm] = entry
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="episode folder of the target task (with 'state' for the probe)")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--arms", default="", help="comma list of arms (see the module docstring)")
    parser.add_argument("--weights", default="0,1,10", help="older spelling: weights of comet arms, 0 = none")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--held_out", type=float, default=0.2)
    parser.add_argument("--out", default="")
    parser.add_argument("--records", default="", help="folder of per-run records (written, and read when present)")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    config = configs.load_config(rest)
    arms = [a for a in args.arms.split(",") if a] or ["none" if float(w) == 0 else f"w{w}"
                                                       for w in args.weights.split(",")]
    for arm in arms:
        arm_overrides(arm)  # a malformed arm fails before any training
    train, held = split_episodes(args.data, args.held_out, seed=0)
    records = pathlib.Path(args.records) if args.records else None
    settings = json.loads(json.dumps({"data": args.data, "teacher": args.teacher, "updates": args.updates,
                                      "eval_every": args.eval_every, "held_out": args.held_out,
                                      "config": {k: v for k, v in config.to_dict().items() if k != "configs"}}))
    runs = [recorded_run(records, settings, config, train, held, arm, int(s), args.teacher, args.updates,
                         args.eval_every) for arm in arms for s in args.seeds.split(",")]
    keys = ("obs", "distill_mode", "distill_direction", "conditional_distill", "prune_every", "min_active_tasks",
            "batch_size", "batch_length", "cnn_depth", "dyn_deter", "dyn_stoch", "embed_size", "mlp_units",
            "grad_share_every", "distill_share", "distill_auto_ema", "distill_auto_range", "distill_horizon",
            "image_scale", "reward_scale", "model_lr")
    result = {"data": args.data, "teacher": args.teacher, "config": {k: config[k] for k in keys},
              "arms": arms, "seeds": args.seeds, "train_episodes": len(train), "held_out_episodes": len(held),
              "updates": args.updates, "eval_updates": [p["update"] for p in runs[0]["curve"]],
              "final_held_out": summarise(runs), "runs": runs, "machine": machine()}
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(tools.run_main("distill_offline.py", main))
