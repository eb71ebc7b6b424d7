"""Stage 2: train a student Dreamer agent online on one Meta-World target task.

    python dreamer_distill.py --configs defaults metaworld metaworld_state --task metaworld_reach \
        --logdir runs/reach --use_distill False [--device cpu --seed 0]

All step counts in the config (steps, prefill, train_every, eval_every, log_every, checkpoint_every)
are ENV steps: one policy step moves every training env `action_repeat` env steps, so with n envs a
loop iteration adds n * action_repeat env steps. Updates follow the env steps deterministically:
after prefill, `pretrain + train_steps * floor((step - prefill) / train_every)` updates are due.

Writes to --logdir: config.yaml, train_eps/ and eval_eps/ (one .npz per episode, SPEC.md format),
metrics.jsonl + TensorBoard events, latest.pt (atomic, every checkpoint_every env steps and on Ctrl-C).
Running the same command again resumes from latest.pt with the replay rebuilt from train_eps/ (episodes saved
after that checkpoint are moved to train_eps/superseded/, since the resumed run collects those steps again).
With --use_distill True the teacher guides the student's world model through `build_distiller`.
"""
from __future__ import annotations

import math
import os
import pathlib
import random
import sys
import time
import warnings

import numpy as np

import tools

# Episode keys of the SPEC.md file format that come straight from the step dicts.
STEP_KEYS = ("reward", "discount", "success", "is_first", "is_terminal")


class UsageError(RuntimeError):
    """A command line that cannot run as given; the message says what to do instead."""


# --- distillation ------------------------------------------------------------------------------------

def build_distiller(config, agent, device):
    """The distillation method `distill_mode` for --use_distill True (`methods.build_method`): the frozen
    teacher from `teacher_model_path` (rebuilt from its own stored config, weights loaded strictly) and
    the behaviour teachers stored with it.

    Every way the teacher can fail to fit this run (missing or foreign file, observation type, encoder
    mode or behaviour teachers vs `distill_mode`, sizes) is a UsageError saying what to change, raised
    before any env starts. Pruning events are queued until the loop sets `distiller.logger`.
    """
    import checkpoint
    import methods
    from methods import behaviour
    from models.teacher_io import load_teacher

    path = str(config["teacher_model_path"] or "").strip()
    if not path:
        raise UsageError("--use_distill True needs --teacher_model_path (the teacher.pt written by "
                         "dreamer_pretrain.py), or run the baseline with --use_distill False")
    if not pathlib.Path(path).expanduser().is_file():
        raise UsageError(f"--teacher_model_path {path}: no such file (pretrain a teacher with dreamer_pretrain.py "
                         f"and pass its teacher.pt)")
    try:
        method = methods.method_class(config["distill_mode"])
    except methods.MethodError as err:
        raise UsageError(f"--distill_mode: {err}") from None
    try:
        teacher, meta = load_teacher(pathlib.Path(path).expanduser(), device)
        teachers = behaviour.load(meta, path, device)
    except checkpoint.CheckpointError as err:
        raise UsageError(f"--teacher_model_path: {err}") from None
    try:
        methods.check_compatible(config, teacher, agent.wm.obs_shapes, agent.act_dim, method)
        behaviour.check_compatible(teachers, agent.act_dim, agent.wm.obs_shapes, method.needs)
        distiller = methods.build_method(config, teacher, agent.wm.feat_size, teachers)
    except (methods.MethodError, behaviour.BehaviourError) as err:
        raise UsageError(f"--teacher_model_path {path}: {err}") from None
    print(f"distilling from {path} ({meta['encoder_mode']} teacher, step {meta['step']}, source tasks "
          f"{', '.join(meta['source_tasks'])}; mode {config['distill_mode']})", flush=True)
    return distiller


# --- episodes ------------------------------------------------------------------------------------------

class EpisodeBuilder:
    """Collects step dicts of n envs into SPEC.md episodes (action[t] led to observation t, action[0] = 0)."""

    def __init__(self, n: int, obs_keys, act_dim: int):
        self.obs_keys, self.act_dim = tuple(obs_keys), act_dim
        self.steps = [[] for _ in range(n)]

    def start(self, index: int, obs: dict) -> None:
        """Begin env `index`'s episode with its reset step dict (entries of the stacked arrays at `index`)."""
        self.steps[index] = [self._entry(obs, index, np.zeros(self.act_dim, np.float32))]

    def add(self, index: int, obs: dict, action: np.ndarray) -> None:
        self.steps[index].append(self._entry(obs, index, action))

    def finish(self, index: int) -> dict:
        """The finished episode of env `index` as a dict of arrays (L, ...)."""
        steps, self.steps[index] = self.steps[index], []
        return {k: np.stack([s[k] for s in steps]) for k in steps[0]}

    def _entry(self, obs: dict, index: int, action: np.ndarray) -> dict:
        entry = {k: obs[k][index] for k in (*self.obs_keys, *STEP_KEYS)}
        entry["action"] = np.asarray(action, np.float32)
        return entry


def episode_stats(episode: dict) -> dict:
    """Return, length (policy steps), success at any step and at the final step."""
    return {"return": float(episode["reward"].sum()), "length": len(episode["reward"]) - 1,
            "success_any": float(episode["success"].max()), "success_final": float(episode["success"][-1])}


def merge_reset(obs: dict, indices: list[int], fresh: dict) -> dict:
    """Stacked step dict `obs` with the rows `indices` replaced by the reset dicts `fresh`."""
    out = {k: v.copy() for k, v in obs.items() if k in fresh}
    for k in out:
        out[k][indices] = fresh[k]
    return out


# --- evaluation ----------------------------------------------------------------------------------------

def evaluate(agent, eval_envs, episodes: int, obs_keys) -> list[dict]:
    """Run `episodes` episodes with the mode action on the eval envs; returns the episodes."""
    done_eps = []
    n = eval_envs.n
    while len(done_eps) < episodes:
        obs = eval_envs.reset()
        builder = EpisodeBuilder(n, obs_keys, agent.act_dim)
        for i in range(n):
            builder.start(i, obs)
        state, running = None, np.ones(n, bool)
        while running.any():
            action, state = agent.policy(obs, state, training=False)
            obs = eval_envs.step(action)
            for i in np.flatnonzero(running):
                builder.add(i, obs, action[i])
                if obs["is_last"][i] or obs["is_terminal"][i]:
                    running[i] = False
                    done_eps.append(builder.finish(i))
            if running.any() and not running.all():
                # Envs that finished early idle on a fresh episode whose steps are discarded.
                idle = [int(i) for i in np.flatnonzero(~running) if obs["is_last"][i] or obs["is_terminal"][i]]
                if idle:
                    obs = merge_reset(obs, idle, eval_envs.reset(idle))
    return done_eps[:episodes]


# --- run state -----------------------------------------------------------------------------------------

def rng_state(action_rng, replay) -> dict:
    """Python, NumPy, torch, random-action and replay-sampler RNG states, in checkpoint-safe types."""
    import torch
    import checkpoint

    return {"python": random.getstate(), "numpy": checkpoint.to_builtin(np.random.get_state()),
            "torch": torch.get_rng_state(), "action": action_rng.bit_generator.state, "replay": replay.rng_state()}


def set_rng_state(state: dict, action_rng, replay) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys.numpy() if hasattr(keys, "numpy") else keys, np.uint32),
                         int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    action_rng.bit_generator.state = state["action"]
    replay.set_rng_state(state["replay"])


def prepare_logdir(config) -> tuple[pathlib.Path, bool]:
    """The log folder and whether a checkpoint exists to resume; refuse to mix a new run into an old one."""
    if not config.logdir:
        raise UsageError("--logdir is required (e.g. --logdir runs/reach)")
    logdir = pathlib.Path(config.logdir).expanduser()
    existing = sorted(p.name for p in logdir.iterdir()) if logdir.is_dir() else []
    if existing and not config.resume:
        raise UsageError(f"--logdir {logdir} is not empty ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''})"
                         f" and --resume is False; pass --resume True to continue that run, or choose a new or "
                         f"empty --logdir")
    resume = (logdir / "latest.pt").is_file()
    if existing and not resume:
        warnings.warn(f"{logdir} holds files but no latest.pt; starting at step 0 (episodes already in "
                      f"train_eps/ still go into the replay)", stacklevel=2)
    return logdir, resume


def check_compatible(saved: dict, config) -> None:
    """A resumed run must keep the model architecture and task; other keys (steps, eval_every...) may change."""
    from models.world_model import ARCH_KEYS

    keys = (*ARCH_KEYS, "task", "action_repeat", "actor_dist", "use_distill")
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {config[k]!r}" for k in keys
             if k in saved and saved[k] != config[k]]
    if diffs:
        raise UsageError("cannot resume: the command disagrees with the checkpoint's config (" + "; ".join(diffs)
                         + "); use the original flags or a new --logdir")


def due(step: int, previous: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous, step]."""
    return every > 0 and step // every > previous // every


# --- main loop -----------------------------------------------------------------------------------------

def set_aside_later_episodes(train_dir: pathlib.Path, episodes: int) -> None:
    """Move training episodes saved after the checkpoint (the first `episodes` files, in name = creation
    order, are the checkpoint's) to `train_dir/superseded/`: the resumed run collects those env steps
    again, so keeping them would give the replay more data than its step counter says."""
    from replay import episode_files

    later = episode_files(train_dir)[episodes:]
    if not later:
        return
    aside = train_dir / "superseded"
    aside.mkdir(exist_ok=True)
    for path in later:
        path.rename(aside / path.name)
    print(f"moved {len(later)} episode(s) saved after the checkpoint to {aside}", flush=True)


class Trainer:
    """Owns the envs, replay, agent and logger of one run; `run()` trains until `steps` env steps."""

    def __init__(self, config):
        import torch

        import checkpoint
        import envs
        import logger as logger_lib
        from agent import Agent
        from models.world_model import OBS_KEYS, obs_shapes_from
        from replay import Replay, load_dir

        c = self.config = config
        if c.threads > 0:
            torch.set_num_threads(int(c.threads))
        self.logdir, resume = prepare_logdir(c)
        self.device = tools.get_device(c.device)
        tools.set_seed(c.seed)
        if c.obs not in OBS_KEYS:
            raise UsageError(f"--obs must be one of {sorted(OBS_KEYS)}, got '{c.obs}'")
        self.obs_keys = OBS_KEYS[c.obs]
        try:
            envs.env_name(c.task)
        except ValueError as err:
            raise UsageError(f"--task: {err}") from None
        self.act_dim = envs.ACTION_DIM

        # The agent (and distiller) first: a bad flag fails before any env starts or file is written.
        self.agent = Agent(c, obs_shapes_from(c), self.act_dim, self.device)
        if c.use_distill:
            self.agent.attach_distiller(build_distiller(c, self.agent, self.device))

        payload = checkpoint.load(self.logdir / "latest.pt", self.device) if resume else None
        if payload is not None:
            check_compatible(payload["config"], c)
        tools.save_config(c, self.logdir)
        self.train_dir, self.eval_dir = self.logdir / "train_eps", self.logdir / "eval_eps"
        self.train_dir.mkdir(parents=True, exist_ok=True)
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        if payload is not None:
            set_aside_later_episodes(self.train_dir, int(payload["episodes"]))
        self.replay = Replay(load_dir(self.train_dir, keys=self.obs_keys), c.batch_size, c.batch_length,
                             seed=c.seed, capacity=c.dataset_size)
        self.action_rng = np.random.default_rng([c.seed, 1])
        self.video_rng = np.random.default_rng([c.seed, 2])  # videos must not move the training batches
        self.step, self.episodes, self.last_eval, self.last_success = 0, 0, 0, float("nan")
        if payload is not None:
            self.agent.load_state_dict(payload["agent"])
            self.step, self.episodes = int(payload["step"]), int(payload["episodes"])
            self.last_eval, self.last_success = int(payload["last_eval"]), float(payload["last_success"])
            set_rng_state(payload["rng"], self.action_rng, self.replay)
            print(f"resuming {self.logdir} at env step {self.step} ({self.agent.updates} updates, "
                  f"{self.replay.num_episodes} episodes in replay)", flush=True)
        if getattr(self.agent.distiller, "warmup_due", 0):  # an offline warm start before the online phase
            from methods import MethodError

            try:
                self.agent.distiller.warmup(self.agent, self.agent.distiller.source_batches(c))
            except MethodError as err:
                raise UsageError(str(err)) from None
        self.logger = logger_lib.Logger(self.logdir, resume_step=self.step if payload is not None else None)
        if self.agent.distiller is not None and hasattr(self.agent.distiller, "logger"):
            self.agent.distiller.logger = self.logger  # pruning events go to metrics.jsonl
        # Training envs are seeded per run position so a resumed run does not replay the same positions.
        self.train_envs = envs.VecEnv(c, c.task, c.envs, seed=c.seed + 7919 * self.episodes)
        self.eval_envs = envs.VecEnv(c, c.task, c.eval_envs, seed=c.seed + 100_000 + 7919 * self.episodes)
        self._train_metrics: dict[str, list] = {}
        self._episode_stats: list[dict] = []

    # --- pieces ---------------------------------------------------------------------------------------

    def save(self) -> None:
        """Atomically write <logdir>/latest.pt."""
        import checkpoint

        checkpoint.save(self.logdir / "latest.pt", {
            "config": self.config.to_dict(), "step": self.step, "episodes": self.episodes,
            "last_eval": self.last_eval, "last_success": self.last_success,
            "agent": self.agent.state_dict(), "rng": rng_state(self.action_rng, self.replay)})

    def updates_due(self) -> int:
        c = self.config
        if self.step < c.prefill:
            return 0
        return c.pretrain + c.train_steps * ((self.step - c.prefill) // c.train_every)

    def train(self) -> None:
        """Run the updates the env steps so far call for (none until the replay holds a full window)."""
        target = self.updates_due()
        if self.agent.updates >= target or not self.replay.can_sample():
            return
        while self.agent.updates < target:
            metrics = self.agent.train(self.replay.sample(), self.step)
            for k, v in metrics.items():
                self._train_metrics.setdefault(k, []).append(v)

    def end_episode(self, episode: dict) -> None:
        from replay import save_episode

        path = save_episode(self.train_dir, episode)
        self.replay.add(episode, name=str(path))
        self.episodes += 1
        self._episode_stats.append(episode_stats(episode))

    def log(self, fps: float) -> None:
        lg = self.logger
        for k, values in self._train_metrics.items():
            finite = [v for v in values if math.isfinite(v)]
            lg.scalar(f"train/{k}", np.mean(finite) if finite else float("nan"))
        if "model_skipped" in self._train_metrics:
            lg.scalar("train/model_skipped", float(np.sum(self._train_metrics["model_skipped"])))
        for k in ("return", "length", "success_any", "success_final"):
            if self._episode_stats:
                lg.scalar(f"train/{k}", np.mean([s[k] for s in self._episode_stats]))
        lg.scalars({"train/updates": self.agent.updates, "train/episodes": self.episodes,
                    "replay/steps": self.replay.num_steps, "perf/fps": fps})
        lg.write(self.step)
        self._train_metrics, self._episode_stats = {}, []

    def run_eval(self) -> None:
        from replay import save_episode

        c = self.config
        episodes = evaluate(self.agent, self.eval_envs, c.eval_episodes, self.obs_keys)
        for ep in episodes:
            save_episode(self.eval_dir, ep)
        stats = [episode_stats(ep) for ep in episodes]
        for k in ("return", "length", "success_any", "success_final"):
            self.logger.scalar(f"eval/{k}", np.mean([s[k] for s in stats]))
        self.logger.scalar("eval/episodes", len(stats))
        if "image" in episodes[0] and (c.video_every == 0):
            self.log_videos(episodes[0])
        self.logger.write(self.step)
        self.last_eval, self.last_success = self.step, float(np.mean([s["success_any"] for s in stats]))

    def log_videos(self, episode: dict | None = None) -> None:
        """Eval episode frames and the world model's open-loop prediction of replayed sequences (pixel)."""
        if episode is not None:
            self.logger.video("eval/policy", episode["image"])
        if "image" in self.obs_keys and self.replay.can_sample():
            batch = self.replay.sample(batch=4, rng=self.video_rng)
            self.logger.video("train/open_loop", self.agent.wm.open_loop(batch, self.config.open_loop_context))

    # --- loop -----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Collect, train, evaluate, log and checkpoint until `steps` env steps; Ctrl-C saves and exits."""
        from tqdm import tqdm

        c = self.config
        if self.step >= c.steps:
            print(f"{self.logdir}: already done (env step {self.step} >= steps {c.steps})", flush=True)
            return
        n, repeat = self.train_envs.n, c.action_repeat
        bar = tqdm(total=c.steps, initial=self.step, unit="step", disable=not c.progress, dynamic_ncols=True,
                   desc="env steps", mininterval=1.0)
        builder = EpisodeBuilder(n, self.obs_keys, self.act_dim)
        obs = self.train_envs.reset()
        for i in range(n):
            builder.start(i, obs)
        state = None
        tick, tick_step = time.time(), self.step
        try:
            while self.step < c.steps:
                previous = self.step
                if self.step < c.prefill:
                    action = self.action_rng.uniform(-1.0, 1.0, (n, self.act_dim)).astype(np.float32)
                else:
                    action, state = self.agent.policy(obs, state, training=True)
                obs = self.train_envs.step(action)
                self.step += n * repeat
                ended = []
                for i in range(n):
                    builder.add(i, obs, action[i])
                    if obs["is_last"][i] or obs["is_terminal"][i]:
                        self.end_episode(builder.finish(i))
                        ended.append(i)
                if ended:
                    obs = merge_reset(obs, ended, self.train_envs.reset(ended))
                    for i in ended:
                        builder.start(i, obs)
                self.train()
                if due(self.step, previous, c.eval_every) or self.step >= c.steps:
                    self.run_eval()
                if c.video_every and due(self.step, previous, c.video_every):
                    self.log_videos()
                    self.logger.write(self.step)
                if due(self.step, previous, c.log_every):
                    now = time.time()
                    fps = (self.step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, self.step
                    self.log(fps)
                    bar.set_postfix(updates=self.agent.updates, eval_success=f"{self.last_success:.2f}",
                                    fps=f"{fps:.0f}", refresh=False)
                if due(self.step, previous, c.checkpoint_every) or self.step >= c.steps:
                    self.save()
                bar.update(self.step - previous)
        except KeyboardInterrupt:
            bar.close()
            self.save()
            print(f"\ninterrupted: checkpoint saved at env step {self.step} to {self.logdir / 'latest.pt'}; "
                  f"run the same command to resume", flush=True)
            raise
        bar.close()
        if self._train_metrics or self._episode_stats:  # the tail since the last log_every
            self.log((self.step - tick_step) / max(time.time() - tick, 1e-9))
        print(f"done: {self.step} env steps, {self.agent.updates} updates, last eval success (any step) "
              f"{self.last_success:.2f}", flush=True)

    def close(self) -> None:
        for env in (getattr(self, "train_envs", None), getattr(self, "eval_envs", None)):
            if env is not None:
                env.close()
        if getattr(self, "logger", None) is not None:
            self.logger.close()


def main(argv=None) -> int:
    """Parse flags, train, return the exit code (2: unusable command line, 130: interrupted)."""
    import checkpoint

    try:
        config = tools.load_config(argv, description=__doc__)
        os.environ.setdefault("MUJOCO_GL", config.mujoco_gl)
        trainer = Trainer(config)
    except (UsageError, tools.ConfigError, checkpoint.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except KeyboardInterrupt:
        return 130
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
