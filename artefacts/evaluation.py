"""Evaluate a student checkpoint or a policy variant: seeded episodes through the training loop's own
evaluation (`training.evaluation.evaluate`), per-episode CSV, JSON summary with its protocol, videos of the first episodes (MP4), TensorBoard.

The student itself acts through `Agent.policy` (mode action, sampled latent: exactly the training loop's
evaluation); a quantize.py variant acts through its `ActingPolicy` (mode action, posterior mean).
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib

import numpy as np

import tools
from artefacts import student
from tools import SUCCESS_RULES

STATS = ("return", "length", "success_any", "success_final")


def actor_for(payload: dict, device: str = "cpu"):
    """(object with Agent's acting interface, description of how it acts) for a checkpoint payload."""
    from artefacts import policy, variants

    if payload.get("kind") == student.VARIANT_KIND:
        module = variants.load(payload)
        return policy.PolicyAgent(module, module), f"variant {payload['variant']}: mode action, posterior mean"
    return student.build_agent(payload, device), "student Agent.policy: mode action, sampled posterior"


def run(payload: dict, episodes: int, seed: int, task: str | None = None, envs_n: int = 1, film: int = 0,
        goal_set: int | None = None):
    """(episodes, frames of the first `film` episodes: one uint8 (T + 1, H, W, 3) array each, protocol dict).
    `goal_set` N: the episodes start from the positions of the first evaluation on fixed goal set N (what a
    training run with `--eval_goals fixed --eval_goal_seed N` saw first), else from the env seeds."""
    import envs
    from training.evaluation import evaluate, goal_rule
    from models.world_model import OBS_KEYS

    config = dict(payload["config"])
    try:
        task = envs.canonical_task(task) if task else config["task"]
    except ValueError as err:
        raise student.ArtefactError(f"--task: {err}") from None
    actor, how = actor_for(payload)
    tools.set_seed(seed)
    vec = envs.VecEnv(config, task, envs_n, seed=seed)
    try:
        videos = []
        goals = (goal_set, 0) if goal_set is not None else None
        eps = evaluate(actor, vec, episodes, OBS_KEYS[config["obs"]], videos=videos, film=film, goals=goals)
    finally:
        vec.close()
    protocol = {"task": task, "trained_task": config["task"], "episodes": episodes, "seed": seed,
                "env_seeds": f"{seed} + env index, {envs_n} env(s), episodes in turn", "policy": how,
                "goals": goal_rule({"eval_goals": "fixed", "eval_goal_seed": goal_set}) + " (evaluation 0)"
                if goal_set is not None else "drawn by the env seeds",
                "obs": config["obs"], "action_repeat": config["action_repeat"], "time_limit": config["time_limit"],
                "success_rules": SUCCESS_RULES, "checkpoint_step": int(payload.get("step", 0))}
    return eps, videos, protocol


def standard_error(values) -> float | None:
    """The standard error of the mean of `values`; None for a single value, which has none."""
    values = np.asarray(values, float)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def with_error(mean: float, se: float | None, signed: bool = False) -> str:
    """'0.45 ± 0.11' ('+0.05 ± 0.03' when `signed`), or '0.45 (1 episode: no standard error)'."""
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {se:.2f}" if se is not None else f"{text} (1 episode: no standard error)"


def summarize(eps: list[dict]) -> dict:
    """Mean and standard error (None for one episode) of each episode statistic."""
    from training.episodes import episode_stats

    rows = [episode_stats(ep) for ep in eps]
    out = {}
    for k in STATS:
        values = np.array([r[k] for r in rows], float)
        out[k] = {"mean": float(values.mean()), "se": standard_error(values)}
    return {"per_episode": rows, "summary": out}


def write(out_dir, checkpoint_path, eps, videos, protocol, logdir=None) -> dict:
    """episodes.csv, summary.json, episode<k>.mp4 per video under out_dir; the same numbers and videos in
    TensorBoard under logdir."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = summarize(eps)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["episode", *STATS])
    writer.writeheader()
    for i, row in enumerate(result["per_episode"]):
        writer.writerow({"episode": i, **row})
    summary = {"checkpoint": str(checkpoint_path), "protocol": protocol, **result["summary"]}
    text = json.dumps(summary, indent=1, sort_keys=True) + "\n"
    tools.atomic_write(out_dir / "episodes.csv", lambda f: f.write(table.getvalue().encode()))
    tools.atomic_write(out_dir / "summary.json", lambda f: f.write(text.encode()))
    for k, frames in enumerate(videos):
        write_video(out_dir / f"episode{k}", frames)
    if logdir:
        lg = tools.Logger(logdir)
        for k in STATS:
            lg.scalar(f"eval/{k}", summary[k]["mean"])
        for k, frames in enumerate(videos):
            lg.video(f"eval/policy/episode{k}", frames)
        lg.write(protocol["checkpoint_step"])
        lg.close()
    return summary


def write_video(stem: pathlib.Path, frames: np.ndarray, fps: int = 16) -> pathlib.Path:
    """`stem`.mp4 (H.264 through the ffmpeg binary that imageio-ffmpeg ships) of uint8 (T, H, W, 3) frames, or
    `stem`.gif where imageio-ffmpeg is not installed; returns the path written."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return tools.atomic_write(stem.with_suffix(".gif"), lambda f: f.write(tools.gif_bytes(frames, fps)))
    path = stem.with_suffix(".mp4")
    tmp = path.with_name(f".{path.name}.tmp.mp4")  # ffmpeg picks the container from the suffix
    T, H, W, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=2, quality=8, ffmpeg_log_level="error")
    try:
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        tmp.replace(path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return path
