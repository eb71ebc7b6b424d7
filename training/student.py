"""The online student loop (stage 2): collect with the agent, train it, evaluate, log and checkpoint.

All step counts in the config (steps, prefill, train_every, eval_every, log_every, checkpoint_every, video_every)
are ENV steps: one policy step moves every training env `action_repeat` env steps, so with n envs a loop
iteration adds n * action_repeat env steps. Updates follow the env steps deterministically: after prefill,
`prefill_updates + train_steps * floor((step - prefill) / train_every)` updates are due.

Legend: n envs, A action size.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

import tools
import configs
from tools import ACTION_DIM, OBS_KEYS, UsageError, label_rows, prefill_episode, wandb_settings

from .episodes import STAT_KEYS, EpisodeBuilder, ended, episode_stats, merge_reset
from .evaluation import GOAL_RULES, evaluate
from .run_state import RunDir, rng_state, set_rng_state

CHECKPOINT = "latest.pt"
EPISODE_DIRS = ("train_eps", "eval_eps")
# Config keys besides the model architecture that a resumed run must keep.
RESUME_KEYS = ("task", "action_repeat", "actor_dist", "use_distill")


# --- building -----------------------------------------------------------------------------------------

def build_distiller(config, agent, device):
    """The distillation method `distill_mode` for --use_distill True (`methods.build_method`): the frozen
    teacher from `teacher_model_path` (rebuilt from its own stored config, weights loaded strictly) and
    the behaviour teachers stored with it.

    Every way the teacher can fail to fit this run (missing or foreign file, observation type, encoder
    mode or behaviour teachers vs `distill_mode`, sizes) is a UsageError saying what to change, raised
    before any env starts. Pruning events are queued until the loop sets `distiller.logger`.
    """
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
    except tools.CheckpointError as err:
        raise UsageError(f"--teacher_model_path: {err}") from None
    if config["source_tasks"] and list(config["source_tasks"]) != list(meta["source_tasks"]):
        raise UsageError(f"--source_tasks {','.join(config['source_tasks'])} disagrees with the teacher's source tasks "
                         f"{','.join(meta['source_tasks'])} ({path}); the teacher decides them: drop --source_tasks "
                         f"or pass the teacher's list in its order")
    try:
        methods.check_compatible(config, teacher, agent.wm.obs_shapes, agent.act_dim, method)
        behaviour.check_compatible(teachers, agent.act_dim, agent.wm.obs_shapes, method.needs)
        distiller = methods.build_method(config, teacher, agent.wm.feat_size, teachers)
    except (methods.MethodError, behaviour.BehaviourError) as err:
        raise UsageError(f"--teacher_model_path {path}: {err}") from None
    print(f"distilling from {path} ({meta['encoder_mode']} teacher, step {meta['step']}, source tasks "
          f"{', '.join(meta['source_tasks'])}; mode {config['distill_mode']})", flush=True)
    return distiller


def build_agent(config, device):
    """The student Agent for `config`, with its distiller when `use_distill` (UsageError if it cannot be built),
    compiled and captured as `compile` / `cuda_graphs` say (`accelerate`)."""
    from models.agent import Agent
    from models.world_model import obs_shapes_from

    agent = Agent(config, obs_shapes_from(config), ACTION_DIM, device)
    if config.use_distill:
        agent.attach_distiller(build_distiller(config, agent, device))
    accelerate(agent, config)
    return agent


def accelerate(agent, config) -> None:
    """The one place a student gets `--compile True` (`models.agent.compile_agent`: its world model and a
    distiller's frozen teacher) and `--cuda_graphs True` (`models.graphs.capture_student`: every update replayed
    from a CUDA graph; a UsageError names what it cannot capture)."""
    from models.agent import compile_agent

    if config.compile:
        compile_agent(agent)
    if config.get("cuda_graphs"):
        from models.graphs import capture_student

        capture_student(agent)


def due(step: int, previous: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous, step]."""
    return every > 0 and step // every > previous // every


def _check_flags(config) -> None:
    import envs

    if config.obs not in OBS_KEYS:
        raise UsageError(f"--obs must be one of {sorted(OBS_KEYS)}, got '{config.obs}'")
    try:
        envs.env_name(config.task)
    except ValueError as err:
        raise UsageError(f"--task: {err}") from None
    if config.eval_goals not in GOAL_RULES:
        raise UsageError(f"--eval_goals must be one of {', '.join(GOAL_RULES)}, got '{config.eval_goals}'")
    if int(config.eval_goal_seed) < 0:
        raise UsageError(f"--eval_goal_seed must be >= 0, got {config.eval_goal_seed}")
    for flag in POSITIVE_FLAGS:
        if int(getattr(config, flag)) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(config, flag)}")


# Counts the loop divides by or builds tensors of: 0 would fail deep inside with a traceback, or never end.
POSITIVE_FLAGS = ("envs", "eval_envs", "eval_episodes", "batch_size", "batch_length", "train_every", "action_repeat",
                  "time_limit")


# --- the loop -------------------------------------------------------------------------------------------

class Trainer:
    """Owns the envs, replay, agent and logger of one run; `run()` trains until `steps` env steps."""

    def __init__(self, config):
        c = self.config = config
        tools.set_threads(c.threads)
        self.run_dir = RunDir(c.logdir, c.resume, (CHECKPOINT,), EPISODE_DIRS)
        self.logdir = self.run_dir.path
        self.device = tools.get_device(c.device)
        tools.set_seed(c.seed)
        _check_flags(c)
        self.obs_keys, self.act_dim = OBS_KEYS[c.obs], ACTION_DIM
        # Evaluation episodes keep the true state for the state probe, also where the model sees pixels only.
        self.eval_keys = (*self.obs_keys, "state") if c.probe_every > 0 and "state" not in self.obs_keys \
            else self.obs_keys
        # The agent (and distiller) first: a bad flag fails before any env starts or file is written.
        self.agent = build_agent(c, self.device)
        self.train_envs = self.eval_envs = self.logger = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Lock the logdir, restore the checkpoint (if any) with its replay, then open the logger and envs."""
        import envs
        from models.metrics import Window
        from replay import episode_files
        from replay.pinned import PinnedBatches

        c, run_dir = self.config, self.run_dir
        payload = run_dir.open(self.device)
        run_dir.check_compatible(c, _resume_keys())
        configs.record_config(c, self.logdir, step=int(payload["step"]) if payload is not None else 0)
        self.train_dir, self.eval_dir = self.logdir / "train_eps", self.logdir / "eval_eps"
        self.train_dir.mkdir(parents=True, exist_ok=True)
        self.eval_dir.mkdir(parents=True, exist_ok=True)
        run_dir.rollback(payload and {k: payload[v] for k, v in (("train_eps", "episodes"),
                                                                   ("eval_eps", "eval_episodes")) if v in payload})
        self.replay = self._load_replay(payload is not None)
        self.action_rng = np.random.default_rng([c.seed, 1])
        self.video_rng = np.random.default_rng([c.seed, 2])  # videos must not move the training batches
        self.step, self.episodes, self.last_eval, self.last_success = 0, 0, 0, float("nan")
        self.last_video = 0  # env step of the last eval video
        self.bar = None  # the progress bar while run() runs
        self.eval_episodes = len(episode_files(self.eval_dir))
        self.evaluations = 0  # evaluations so far: the index of the next one's goal list (fixed goal set)
        if payload is not None:
            self._restore(payload)
        if getattr(self.agent.distiller, "warmup_due", 0):  # an offline warm start before the online phase
            from training import critic_warmup

            critic_warmup.warmup(self.agent.distiller, self.agent, critic_warmup.source_batches(self.agent.distiller, c))
        self.logger = run_dir.logger(wandb=wandb_settings(c))
        if self.agent.distiller is not None and hasattr(self.agent.distiller, "logger"):
            self.agent.distiller.logger = self.logger  # pruning events go to metrics.jsonl
        # Training envs are seeded per run position so a resumed run does not replay the same positions.
        self.train_envs = envs.VecEnv(c, c.task, c.envs, seed=c.seed + 7919 * self.episodes)
        eval_env = {**envs.env_settings(c), "obs": "both"} if self.eval_keys != self.obs_keys else c
        self.eval_envs = envs.VecEnv(eval_env, c.task, c.eval_envs, seed=c.seed + 100_000 + 7919 * self.episodes)
        self._train_metrics = Window()  # the updates' metrics stay on the device until a log reads them
        self._episode_stats: list[dict] = []
        self._batches = PinnedBatches(self.device)  # replay batches in page-locked memory on CUDA

    def _load_replay(self, resumed: bool):
        """The replay rebuilt from train_eps/ (after the rollback: exactly the checkpoint's episodes)."""
        import replay
        from replay import Replay, load_dir

        c, skipped = self.config, []
        episodes = load_dir(self.train_dir, keys=self.obs_keys, skipped=skipped)
        if resumed and skipped and not episodes:
            raise UsageError(f"{self.train_dir}: none of the checkpoint's episode files is usable ({skipped[0]}); "
                             f"move the logdir away or choose a new --logdir")
        replay.warn_skipped(skipped)
        return Replay(episodes, c.batch_size, c.batch_length, seed=c.seed, capacity=c.dataset_size)

    def _restore(self, payload: dict) -> None:
        self.agent.load_state_dict(payload["agent"])
        self.step, self.episodes = int(payload["step"]), int(payload["episodes"])
        self.last_eval, self.last_success = int(payload["last_eval"]), float(payload["last_success"])
        self.eval_episodes = int(payload.get("eval_episodes", self.eval_episodes))
        # A checkpoint from before the count: every earlier evaluation ran eval_episodes episodes.
        self.evaluations = int(payload.get("evaluations", self.eval_episodes // max(1, self.config.eval_episodes)))
        set_rng_state(payload["rng"], self._streams())
        print(f"resuming {self.logdir} at env step {self.step} ({self.agent.updates} updates, "
              f"{self.replay.num_episodes} episodes in replay)", flush=True)

    def _streams(self) -> dict:
        return {"action": self.action_rng, "replay": self.replay}

    # --- pieces ---------------------------------------------------------------------------------------

    def save(self) -> None:
        """Atomically write <logdir>/latest.pt."""
        self.run_dir.save(CHECKPOINT, {
            "config": self.config.to_dict(), "step": self.step, "episodes": self.episodes,
            "eval_episodes": self.eval_episodes, "evaluations": self.evaluations, "last_eval": self.last_eval,
            "last_success": self.last_success,
            "agent": self.agent.state_dict(), "rng": rng_state(self._streams())})

    def updates_due(self) -> int:
        c = self.config
        if self.step < c.prefill:
            return 0
        return c.prefill_updates + c.train_steps * ((self.step - c.prefill) // c.train_every)

    def train_due(self) -> None:
        """Run the updates the env steps so far call for (none until the replay holds a full window).

        A long block of updates (the updates right after prefill) shows its progress on the run's bar."""
        target = self.updates_due()
        if self.agent.updates >= target or not self.replay.can_sample():
            return
        shown = time.time()
        while self.agent.updates < target:
            self._train_metrics.add(self.agent.train(self._batches.sample(self.replay), self.step))
            if self.bar is not None and time.time() - shown > 1.0:
                shown = time.time()
                self.bar.set_postfix(updates=f"{self.agent.updates}/{target}", eval_success=f"{self.last_success:.2f}")

    def end_episode(self, episode: dict, start_step: int) -> None:
        """Save and replay a finished training episode that began at env step `start_step`.

        Prefill episodes (random actions) are data only: the `train/` episode figures leave them out."""
        from replay import save_episode

        path = save_episode(self.train_dir, episode)
        self.replay.add(episode, name=str(path))
        self.episodes += 1
        if not prefill_episode(start_step, self.config.prefill):
            self._episode_stats.append(episode_stats(episode))

    def log(self) -> None:
        """Write the metrics since the last log: one read of the device for all updates' metrics and the
        divergence check (`Agent.check_finite`)."""
        lg = self.logger
        health = self.agent.health()
        means, counts = self._train_metrics.read(extra=health)
        self.agent.check_finite({k: means.pop(k) for k in health})
        for k, value in means.items():
            lg.scalar(f"train/{k}", value)  # the mean over the finite values (NaN when none was)
        if "model_skipped" in means:
            lg.scalar("train/model_skipped", means["model_skipped"] * counts["model_skipped"])
        for k in STAT_KEYS:
            if self._episode_stats:
                lg.scalar(f"train/{k}", np.mean([s[k] for s in self._episode_stats]))
        lg.scalars({"train/updates": self.agent.updates, "train/episodes": self.episodes,
                    "replay/steps": self.replay.num_steps, "perf/fps": lg.fps(self.step)})
        lg.write(self.step)
        self._episode_stats = []

    def run_eval(self) -> None:
        c = self.config
        video = c.video_every == 0 or due(self.step, self.last_video, c.video_every)
        videos = [] if video else None
        goals = (c.eval_goal_seed, self.evaluations) if c.eval_goals == "fixed" else None
        episodes = evaluate(self.agent, self.eval_envs, c.eval_episodes, self.eval_keys, videos=videos, goals=goals)
        with tools.stop_signals_deferred():
            self._record_eval(episodes, video, videos)

    def _record_eval(self, episodes: list[dict], video: bool, videos: list | None) -> None:
        """An evaluation's episodes, row and bookkeeping, written as one (run_eval holds a stop back meanwhile)."""
        from replay import save_episode

        c = self.config
        self.evaluations += 1
        for ep in episodes:
            save_episode(self.eval_dir, ep)
        self.eval_episodes += len(episodes)
        stats = [episode_stats(ep) for ep in episodes]
        for k in STAT_KEYS:
            self.logger.scalar(f"eval/{k}", np.mean([s[k] for s in stats]))
        self.logger.scalar("eval/episodes", len(stats))
        if video:
            self.logger.video("eval/policy", videos[0])  # state runs too: their frames are rendered
            self.last_video = self.step
        if c.video_every == 0:
            self.log_open_loop()
        if due(self.step, self.last_eval, c.probe_every):
            self.log_probe(episodes)
        self.logger.write(self.step)
        self.last_eval, self.last_success = self.step, float(np.mean([s["success_any"] for s in stats]))

    def log_probe(self, episodes: list[dict]) -> None:
        """The state probe (training/probe.py) of the student's and the teacher's latents on evaluation episodes."""
        from .probe import probe

        distiller = self.agent.distiller
        teacher = getattr(distiller, "teacher", None)
        tasks = list(getattr(distiller, "active_ids", [])) if teacher is not None else []
        self.logger.scalars(probe(self.agent.wm, episodes, teacher, tasks))

    def log_open_loop(self) -> None:
        """The world model's open-loop prediction of replayed sequences (pixel), rows labelled."""
        if "image" in self.obs_keys and self.replay.can_sample():
            batch = self.replay.sample(batch=4, rng=self.video_rng)
            strip = self.agent.wm.open_loop(batch, self.config.open_loop_context)  # (B, T, 3H, W, 3)
            self.logger.video("train/open_loop", label_rows(strip, ("truth", "model", "error")))

    # --- loop -----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Collect, train, evaluate, log and checkpoint until `steps` env steps; Ctrl-C / SIGTERM save and exit."""
        from tqdm import tqdm

        c = self.config
        if self.step >= c.steps and not self.eval_pending():
            print(f"{self.logdir}: already done (env step {self.step} >= steps {c.steps})", flush=True)
            return
        # miniters=1: redraw whenever a second has passed, also after fast prefill steps set a large stride.
        bar = self.bar = tqdm(total=c.steps, initial=self.step, unit="step", disable=not c.progress,
                              dynamic_ncols=True, desc="env steps", mininterval=1.0, miniters=1)
        self.logger.fps(self.step)
        try:
            if self.step > 0:  # resumed: what a stop cut short at the saved step (its updates, its evaluation)
                self.train_due()
                self._periodic(self.step, bar)
            self._loop(bar)
            # The final bar shows the final values, not those of the last log_every.
            bar.set_postfix(updates=self.agent.updates, eval_success=f"{self.last_success:.2f}")
        except KeyboardInterrupt:
            bar.close()
            with tools.stop_signals_ignored():
                self.save()
            print(f"\ninterrupted: checkpoint saved at env step {self.step} to {self.logdir / CHECKPOINT}; "
                  f"run the same command to resume", flush=True)
            raise
        bar.close()
        if self._train_metrics or self._episode_stats:  # the tail since the last log_every
            self.log()
        print(f"done: {self.step} env steps, {self.agent.updates} updates, last eval success (any step) "
              f"{self.last_success:.2f}", flush=True)

    def _loop(self, bar) -> None:
        c = self.config
        n = self.train_envs.n
        builder = EpisodeBuilder(n, self.obs_keys, self.act_dim)
        obs = self.train_envs.reset()
        for i in range(n):
            builder.start(i, obs)
        self._starts = [self.step] * n  # env step at which each env's current episode began
        state = None
        while self.step < c.steps:
            previous = self.step
            if self.step < c.prefill:
                action = self.action_rng.uniform(-1.0, 1.0, (n, self.act_dim)).astype(np.float32)
            else:
                action, state = self.agent.policy(obs, state, training=True)
            obs = self._env_step(builder, action)
            self.train_due()
            self._periodic(previous, bar)
            bar.update(self.step - previous)

    def _env_step(self, builder: EpisodeBuilder, action: np.ndarray) -> dict:
        """Step the training envs with `action` (n, A), save finished episodes and restart their envs."""
        obs = self.train_envs.step(action)
        self.step += self.train_envs.n * self.config.action_repeat
        finished = []
        for i in range(self.train_envs.n):
            builder.add(i, obs, action[i])
            if ended(obs, i):
                self.end_episode(builder.finish(i), self._starts[i])
                finished.append(i)
        if finished:
            obs = merge_reset(obs, finished, self.train_envs.reset(finished))
            for i in finished:
                builder.start(i, obs)
                self._starts[i] = self.step
        return obs

    def eval_pending(self) -> bool:
        """Whether an evaluation is due at this step: a multiple of eval_every passed since the last one, or the
        run's end. Counted from the last evaluation, not the previous step, so a run stopped between reaching a
        step and evaluating it evaluates it on resuming."""
        c = self.config
        return self.last_eval < self.step and (due(self.step, self.last_eval, c.eval_every) or self.step >= c.steps)

    def _periodic(self, previous: int, bar) -> None:
        """Evaluation, videos, logging and checkpoints whose period ends in (previous, step]."""
        c, last = self.config, self.step >= self.config.steps
        if self.eval_pending():
            self.run_eval()
            bar.set_postfix(updates=self.agent.updates, eval_success=f"{self.last_success:.2f}", refresh=False)
        if c.video_every and due(self.step, previous, c.video_every):
            self.log_open_loop()
            self.logger.write(self.step)
        if due(self.step, previous, c.log_every):
            self.log()
            bar.set_postfix(updates=self.agent.updates, eval_success=f"{self.last_success:.2f}", refresh=False)
        if due(self.step, previous, c.checkpoint_every) or last:
            self.save()

    def close(self) -> None:
        try:
            for env in (self.train_envs, self.eval_envs):
                if env is not None:
                    env.close()
            if self.logger is not None:
                self.logger.close()
        finally:  # the lock goes even when the last flush fails (a full disk)
            self.run_dir.close()


def _resume_keys() -> tuple:
    from models.world_model import ARCH_KEYS

    return (*ARCH_KEYS, *RESUME_KEYS)
