"""Does distillation help the student's world model learn? A controlled offline check without RL.

    python bench/distill_offline.py --data data/target_task --teacher logs/teacher/teacher.pt \
        --weights 0,1,10 --seeds 0,1,2 --updates 600 --configs defaults metaworld metaworld_state ...

Online runs mix two sources of variance (the world model and the policy that collects its data).
Here every student world model trains on the same fixed episodes of the target task, with the
distillation weight as the only difference (0 = no distiller at all), and is scored every
`--eval_every` updates on all windows of the same held-out episodes: the world-model loss and its parts (KL, state
and reward NLL, all without the distillation term). It also reports a linear probe: how well a ridge
regression from the student's posterior feature predicts the true 39-d state on held-out data
(R^2, fitted on training windows) — a direct measure of what the latent has captured.
Prints one JSON object.

Shape legend: B batch, T time, F feature size, Ds state size.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import configs  # noqa: E402
import tools  # noqa: E402
from bench.common import emit, machine  # noqa: E402


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
    n_held = max(1, int(round(held_out * len(episodes))))
    return [episodes[i] for i in order[n_held:]], [episodes[i] for i in order[:n_held]]


@torch.no_grad()
def score(wm, batches: list[dict], probe=None) -> dict:
    """Metrics over fixed held-out batches, weighted by batch size; with `probe` (W, b) also the state R^2."""
    sums: dict[str, float] = {}
    feats, states = [], []
    total = sum(len(b["action"]) for b in batches)
    for batch in batches:
        data = wm.preprocess(batch)
        _, metrics, post = wm.loss(data)
        for key in ("model_loss", "kl_value", "state", "reward"):
            sums[key] = sums.get(key, 0.0) + metrics[key] * len(batch["action"]) / total
        feats.append(wm.dynamics.get_feat(post).reshape(-1, wm.feat_size))
        states.append(data["state"].reshape(-1, data["state"].shape[-1]))
    if probe is not None:
        x, y = torch.cat(feats), torch.cat(states)  # (M, F), (M, Ds)
        weight, bias = probe
        pred = x @ weight + bias
        sums["probe_r2"] = float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    return sums


@torch.no_grad()
def fit_probe(wm, batches: list[dict], ridge: float = 1e-2):
    """Ridge regression feat -> true state on training batches: (W (F, Ds), b (Ds,))."""
    feats, states = [], []
    for batch in batches:
        data = wm.preprocess(batch)
        post, _ = wm.observe(data)
        feats.append(wm.dynamics.get_feat(post).reshape(-1, wm.feat_size))
        states.append(data["state"].reshape(-1, data["state"].shape[-1]))
    x, y = torch.cat(feats), torch.cat(states)
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    weight = torch.linalg.solve(xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1]), xc.T @ (y - my))
    return weight, my - mx @ weight


def run(config, train, held, weight: float, seed: int, teacher_path: str, updates: int, eval_every: int) -> dict:
    """Train one student world model on `train` with distillation weight `weight`; return its curves."""
    from methods import build_method
    from models.teacher_io import load_teacher
    from models.world_model import WorldModel
    from replay import Replay

    tools.set_seed(seed)
    wm = WorldModel(config, 4)
    opt = torch.optim.Adam(wm.parameters(), lr=config["model_lr"], eps=config["model_eps"])
    distiller, dopt = None, None
    if weight > 0:
        teacher, _ = load_teacher(teacher_path, "cpu")
        distiller = build_method({**config, "distill_weight": str(weight)}, teacher, wm.feat_size, verbose=False)
        dopt = torch.optim.Adam(distiller.parameters(), lr=config["model_lr"], eps=config["model_eps"])
    replay = Replay(train, config["batch_size"], config["batch_length"], seed=seed)
    held_batches = windows(held, config["batch_length"])  # the same held-out windows for every run
    probe_batches = [Replay(train, 16, config["batch_length"], seed=99).sample() for _ in range(4)]
    curve = []
    start = time.process_time()
    for update in range(updates + 1):
        if update % eval_every == 0:
            wm.eval()
            point = {"update": update, **score(wm, held_batches, fit_probe(wm, probe_batches))}
            curve.append({k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()})
            wm.train()
            print(f"[offline] w={weight} seed={seed} {curve[-1]}", file=sys.stderr, flush=True)
        if update == updates:
            break
        data = wm.preprocess(replay.sample())
        loss, _, post = wm.loss(data)
        if distiller is not None:
            extra, _ = distiller.world_model_loss(data, post, wm, update)
            loss = loss + extra
            dopt.zero_grad(set_to_none=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), config["model_grad_clip"])
        opt.step()
        if dopt is not None:
            dopt.step()
    active = distiller.active_tasks if distiller is not None else []
    return {"weight": weight, "seed": seed, "curve": curve, "active_tasks_at_end": active,
            "cpu_s": round(time.process_time() - start, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="episode folder of the target task")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--weights", default="0,1,10", help="distillation weights; 0 = no distiller")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--held_out", type=float, default=0.2)
    parser.add_argument("--out", default="")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    config = configs.load_config(rest)
    train, held = split_episodes(args.data, args.held_out, seed=0)
    runs = [run(config, train, held, float(w), int(s), args.teacher, args.updates, args.eval_every)
            for w in args.weights.split(",") for s in args.seeds.split(",")]
    summary = {}
    for w in sorted({r["weight"] for r in runs}):
        group = [r for r in runs if r["weight"] == w]
        last = {k: [r["curve"][-1][k] for r in group] for k in group[0]["curve"][-1] if k != "update"}
        summary[str(w)] = {k: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)}
                           for k, v in last.items()}
        curve_keys = [k for k in group[0]["curve"][0] if k != "update"]
        summary[str(w)]["mean_over_evals_after_0"] = {
            k: round(float(np.mean([np.mean([p[k] for p in r["curve"][1:]]) for r in group])), 4) for k in curve_keys}
        summary[str(w)]["curve_mean"] = {k: [round(float(np.mean([r["curve"][i][k] for r in group])), 4)
                                             for i in range(len(group[0]["curve"]))] for k in curve_keys}
    keys = ("distill_mode", "distill_direction", "conditional_distill", "prune_every", "min_active_tasks",
            "batch_size", "batch_length", "dyn_deter", "dyn_stoch", "embed_size", "mlp_units")
    result = {"data": args.data, "teacher": args.teacher, "config": {k: config[k] for k in keys}, "train_episodes": len(train), "held_out_episodes": len(held),
              "updates": args.updates, "eval_updates": [p["update"] for p in runs[0]["curve"]],
              "final_held_out": summary, "runs": runs}
    result["machine"] = machine()
    return emit(result, args.out)


if __name__ == "__main__":
    main()
