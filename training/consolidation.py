"""Consolidation: what the teacher's multi-task behaviour actor retains of the scripted experts that
taught it. Each source task is run in the real env with the actor (one policy for all tasks, told the
task id) and with that task's scripted expert, through the student's evaluation code.

    python -m training.consolidation --teacher_model_path runs/teacher/teacher.pt --eval_episodes 20 \\
        --out runs/teacher/consolidation.json [--seed 0 --eval_envs 1]

Prints one row per task (success at any step / at the final step, mean return) and writes them as JSON.
"""
from __future__ import annotations

import json
import pathlib
import sys
import warnings

import numpy as np

import configs


class _StatePolicy:
    """What the evaluation loop needs of an agent (`act_dim`, `policy(obs, state, training)`), for a
    deterministic policy of the raw state (n, 39) -> actions (n, A)."""

    def __init__(self, act, act_dim: int):
        self.act, self.act_dim = act, act_dim

    def policy(self, obs: dict, state=None, training: bool = False):
        action = np.clip(np.asarray(self.act(obs["state"]), np.float32), -1.0, 1.0)  # (n, A)
        return action, state


def actor_policy(actor, task_id: int) -> _StatePolicy:
    import torch

    def act(states):
        with torch.no_grad():
            return actor(torch.as_tensor(states, dtype=torch.float32, device=actor.mean.device), task_id).cpu().numpy()

    return _StatePolicy(act, actor.act_dim)


def expert_policy(task: str, act_dim: int) -> _StatePolicy:
    import envs
    from collection.experts import expert_policy as scripted

    expert = scripted(envs.env_name(task))

    def act(states):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn about their own gains on every call
            return np.stack([expert.get_action(s.astype(np.float64)) for s in states])

    return _StatePolicy(act, act_dim)


def evaluate_teacher_actor(teacher_path, episodes: int = 20, seed: int = 0, n_envs: int = 1, device="cpu",
                           experts: bool = True) -> dict[str, dict]:
    """Success of the teacher's behaviour actor (and of the scripted expert) on each source task:
    {task: {"actor": {success_any, success_final, return}, "expert": {...}}}. The envs use the action
    repeat and time limit the teacher's data was collected with (its stored config), state observations."""
    import envs
    from training.episodes import episode_stats
    from training.evaluation import evaluate
    from models.teacher_io import load_teacher

    from methods import behaviour
    from methods.base import MethodError

    teacher, meta = load_teacher(teacher_path, device)
    actor = behaviour.load(meta, teacher_path, device).actor
    if actor is None:
        raise MethodError(f"{teacher_path}: the teacher has no behaviour actor; pretrain it with "
                          f"--teacher_actor_steps N (e.g. 3000)")
    stored = meta["config"]
    results = {}
    for k, task in enumerate(teacher.task_names):
        config = configs.Config({**stored, "obs": "state", "task": task})
        policies = {"actor": actor_policy(actor, k)}
        if experts:
            policies["expert"] = expert_policy(task, actor.act_dim)
        results[task] = {}
        for name, policy in policies.items():
            # The same env seeds for both, so they face the same initial positions.
            vec = envs.VecEnv(config, task, n_envs, seed=seed + 1000 * k)
            try:
                stats = [episode_stats(e) for e in evaluate(policy, vec, episodes, ("state",))]
            finally:
                vec.close()
            results[task][name] = {key: float(np.mean([s[key] for s in stats]))
                                   for key in ("success_any", "success_final", "return")}
            results[task][name]["episodes"] = len(stats)
    return results


def main(argv=None) -> int:
    import envs
    import tools

    from methods.base import MethodError

    try:
        config = configs.load_config(argv, description=__doc__.splitlines()[0])
        envs.select_gl_backend(config.mujoco_gl)  # before the experts import mujoco
        if not config.teacher_model_path:
            raise MethodError("--teacher_model_path is required (a teacher.pt with a behaviour actor)")
        if config.threads > 0:
            import torch

            torch.set_num_threads(int(config.threads))
        results = evaluate_teacher_actor(config.teacher_model_path, config.eval_episodes, config.seed,
                                         config.eval_envs, config.device)
    except (MethodError, configs.ConfigError, tools.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'task':<28} {'actor any/final':>16} {'expert any/final':>17}")
    for task, r in results.items():
        a, e = r["actor"], r["expert"]
        print(f"{task:<28} {a['success_any']:>8.2f}/{a['success_final']:.2f} {e['success_any']:>9.2f}/{e['success_final']:.2f}")
    if config.out:
        path = pathlib.Path(config.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        from tools import atomic_write

        text = json.dumps({"teacher": str(config.teacher_model_path), "episodes": config.eval_episodes,
                           "seed": config.seed, "results": results}, indent=2).encode()
        atomic_write(path, lambda f: f.write(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
