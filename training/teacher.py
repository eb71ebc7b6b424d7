"""The multi-task teacher loop (stage 1): task-balanced updates of the teacher world model on the K
source datasets, with optional PCGrad, diagnostics, periodic checkpoints and exact resume.

Legend: B batch, T sequence length, K source tasks, N experts, P tasks present in a batch (docs/architecture.md).
"""
from __future__ import annotations

import re
import sys
import time

import numpy as np
import torch

import configs
import tools
from models.metrics import Window
from models.optim import adam, step_if
from tools import Logger, UsageError, label_rows, wandb_settings

from .gradients import assign, cosine_matrix, pcgrad, per_task_gradients
from .run_state import RunDir, rng_state, set_rng_state
from .sources import TaskBatcher, load_sources, model_keys

CHECKPOINT, FINAL = "latest.pt", "teacher.pt"
VIDEO_SEQUENCES = 2  # open-loop sequences shown per task
DIAG_SEQUENCES = 16  # sequences used for the expert |cos| diagnostic


def _check_flags(config) -> None:
    if config.grad_surgery not in ("none", "pcgrad"):
        raise UsageError(f"grad_surgery must be none | pcgrad, got '{config.grad_surgery}'")
    if config.grad_surgery == "pcgrad" and config.task_batching != "mixed":
        raise UsageError("grad_surgery pcgrad needs batches that mix tasks: use --task_batching mixed")
    if config.get("cuda_graphs"):
        reasons = ([] if str(config.device).startswith("cuda") else [f"needs --device cuda (not {config.device})"]) + (
            ["--grad_surgery pcgrad decides per batch on the host which tasks it holds"]
            if config.grad_surgery == "pcgrad" else [])
        if reasons:
            raise UsageError("--cuda_graphs True: " + "; ".join(reasons) + " (or run with --cuda_graphs False)")


class TeacherTrainer:
    """Owns the data, teacher, optimizer and logger of one pretraining run; `run()` trains to
    `pretrain_iterations` updates and writes `teacher.pt`."""

    def __init__(self, config):
        from models import TeacherWorldModel

        c = self.config = config
        self.run_dir = RunDir(c.logdir, c.resume, (CHECKPOINT, FINAL))
        _check_flags(c)
        tools.set_seed(c.seed)
        self.device = tools.get_device(c.device)
        tools.set_threads(c.threads)
        sources, self.act_dim, obs_shapes = load_sources(c)
        keys = model_keys(c.obs)
        self.batcher = TaskBatcher(sources, c.batch_size, c.batch_length, c.seed, c.task_batching, keys)
        self.diag = TaskBatcher(sources, c.batch_size, c.batch_length, c.seed + 1, "mixed", keys)
        self.model = TeacherWorldModel(c, self.act_dim, obs_shapes).to(self.device)
        self.optimizer = make_optimizer(self.model, c)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.step, self.logger = 0, None
        self.first_bad = None  # 1 + the first update with a non-finite loss or gradient (0: none), on the device
        self._step_t = None  # the number of updates made, on the device (for first_bad)
        self.graphs = None  # models.graphs.CapturedUpdate of device_update with --cuda_graphs True
        self.behaviour = None  # behaviour teachers, fitted after the world model
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _streams(self) -> dict:
        return {"batcher": self.batcher, "diag": self.diag, "pcgrad": self.generator}

    def _open(self) -> None:
        from models import TEACHER_ARCH_KEYS, compile_model

        c, run_dir = self.config, self.run_dir
        payload = run_dir.open(self.device)
        run_dir.check_compatible(c, TEACHER_ARCH_KEYS, {"act_dim": self.act_dim})
        if payload is not None:
            self._restore(payload)
        configs.record_config(c, run_dir.path, step=self.step)
        if c.compile:
            compile_model(self.model)
        if c.get("cuda_graphs"):
            from models.graphs import capture_teacher

            self.graphs = capture_teacher(self.model, self.optimizer, self.device_update)
        self.logger = run_dir.logger(wandb=wandb_settings(c))
        if self.model.encoder_mode == "moe":  # one chart per task of its gate weights (Custom Scalars)
            self.logger.layout({"gates": {f"gate weights of {task}": [f"gate/{re.escape(task)}/expert\\d+"]
                                          for task in c.source_tasks}})
        resumed = run_dir.checkpoint_path
        self.logger.event("pretrain_start", step=self.step, source_tasks=list(c.source_tasks),
                          source_task_dirs=list(c.source_task_dirs), encoder_mode=c.teacher_encoder_mode,
                          moe_temperature=c.moe_temperature, resumed_from=str(resumed) if resumed else None)

    def _restore(self, payload: dict) -> None:
        path = self.run_dir.checkpoint_path
        try:
            self.model.load_state_dict(payload["model"], strict=True)
        except RuntimeError as err:
            raise UsageError(f"cannot resume from {path}: {' '.join(str(err).split())[:1000]}") from None
        if payload.get("optimizer") is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        if "rng" in payload:
            set_rng_state(payload["rng"], self._streams())
        print(f"resuming from {path} at update {self.step}", file=sys.stderr)

    def save(self, name: str) -> None:
        from models import teacher_payload

        from methods import behaviour

        extra = {"rng": rng_state(self._streams())}
        if self.behaviour is not None:
            extra["behaviour"] = behaviour.payload(self.behaviour)
        self.run_dir.save(name, teacher_payload(self.model, self.optimizer, self.step, self.config, extra))

    # --- one update -----------------------------------------------------------------------------------

    def update(self) -> dict:
        """One optimizer step on the batch of update `self.step`; returns its metrics (0-d device tensors,
        nothing read back). A non-finite loss or gradient norm skips the step on the device; the next log
        (`check_finite`) raises."""
        batch = self.batcher.sample(self.step)
        present = sorted(set(np.asarray(batch["task"]).tolist()))  # the host's own ids: no device read
        data = self.model.preprocess(batch)
        if self.first_bad is None:  # device counters, made before any capture and changed in place after
            self.first_bad = torch.zeros((), dtype=torch.long, device=self.device)
            self._step_t = torch.full((), self.step, dtype=torch.long, device=self.device)
        if self.graphs is not None:  # --cuda_graphs True: replayed from a CUDA graph (models.graphs)
            metrics = self.graphs(data)
        else:
            metrics = self.device_update(data, present)
        self.step += 1
        return metrics

    def device_update(self, data: dict, present: list[int] | None = None) -> dict:
        """The update's device work on a preprocessed batch (what --cuda_graphs captures; `present`, the tasks in
        the batch, only for PCGrad, which the capture refuses): losses, backward, clipping, the step."""
        c, model = self.config, self.model
        weighted, metrics, _ = model.task_losses(data)
        self.optimizer.zero_grad(set_to_none=True)
        if c.grad_surgery == "pcgrad" and len(present) > 1:
            grads, shared, specific, specific_sum = per_task_gradients(model, weighted, present)
            combined, conflict = pcgrad(grads, self.generator)
            assign(shared, combined)
            assign(specific, specific_sum)
            metrics["pcgrad_conflicts"] = conflict
        else:
            weighted.sum().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.model_grad_clip)
        ok = torch.isfinite(metrics["model_loss"]) & torch.isfinite(grad_norm)
        # In place, and the update's index from the device: a captured update replays into these tensors.
        self._step_t.add_(1)
        self.first_bad.copy_(torch.where(~ok & (self.first_bad == 0), self._step_t, self.first_bad))
        step_if(self.optimizer, ok)
        metrics["grad_norm"] = grad_norm
        return metrics

    def check_finite(self, first_bad: float) -> None:
        """Raise FloatingPointError for a non-finite update (`first_bad`, as read from `self.first_bad`, is that
        update + 1; 0 while every update was finite)."""
        if first_bad > 0:
            raise FloatingPointError(f"non-finite teacher loss or gradient norm at update {int(first_bad) - 1} (its "
                                     f"optimizer step and any later such one were skipped; found at update "
                                     f"{self.step}); lower --model_lr or check the data")

    # --- loop -----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Train to `pretrain_iterations` updates, then write teacher.pt; Ctrl-C / SIGTERM save latest.pt."""
        from tqdm import tqdm

        total = self.config.pretrain_iterations
        bar = tqdm(total=total, initial=min(self.step, total), disable=not self.config.progress, desc="pretrain",
                   dynamic_ncols=True, miniters=1)
        self.model.train()
        try:
            self._loop(total, bar)
        except KeyboardInterrupt:
            bar.close()
            with tools.stop_signals_ignored():
                self.save(CHECKPOINT)
            print(f"\ninterrupted: checkpoint saved at update {self.step} to {self.run_dir.path / CHECKPOINT}; "
                  f"run the same command to resume", file=sys.stderr, flush=True)
            raise
        bar.close()
        self.fit_behaviour()
        self.save(FINAL)
        self.logger.event("pretrain_done", step=self.step, path=str(self.run_dir.path / FINAL))
        print(f"teacher written to {self.run_dir.path / FINAL} (update {self.step})", file=sys.stderr)

    def _loop(self, total: int, bar) -> None:
        c = self.config
        window = Window()  # the updates' metrics stay on the device until a log reads them
        last_time, last_step, loss = time.time(), self.step, float("nan")
        self.logger.fps(self.step)
        while self.step < total:
            window.add(self.update())
            bar.update(1)
            now = time.time()
            if now - last_time > 2.0 or self.step == total:
                rate = (self.step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, self.step
                bar.set_postfix(loss=f"{loss:.2f}", ups=f"{rate:.2f}")  # the loss of the last log
            if self.step % c.log_every == 0 or self.step == total:
                loss = self.write_metrics(window)
                self.logger.scalar("train/updates_per_sec", self.logger.fps(self.step))
                log_diagnostics(self.model, self.diag, self.step, c, self.logger)
                self.logger.write(self.step)
                self.logger.fps(self.step)  # the diagnostics' own time is not counted
            if self.step % c.checkpoint_every == 0 and self.step < total:
                self.save(CHECKPOINT)

    def write_metrics(self, window: Window) -> float:
        """Log the window's means under `train/` (one read of the device, which also checks that every update
        was finite); a per-task metric averages over the updates whose batch held that task. Returns the
        mean loss."""
        means, counts = window.read(extra={"first_bad": self.first_bad} if self.first_bad is not None else None)
        self.check_finite(means.pop("first_bad", 0))
        for name, value in means.items():
            if counts[name]:
                self.logger.scalar("train/" + name, value)
        return means.get("model_loss", float("nan"))

    def fit_behaviour(self) -> None:
        """Behaviour teachers read the raw state, not the world model: fitted once it is done (cheap, seeded)."""
        from training import behaviour

        c = self.config
        self.behaviour = behaviour.fit(c, c.source_tasks, c.source_task_dirs, self.device,
                                       log=lambda line: print(line, file=sys.stderr))

    def close(self) -> None:
        try:
            if self.logger is not None:
                self.logger.close()
        finally:  # the lock goes even when the last flush fails (a full disk)
            self.run_dir.close()


def make_optimizer(model, config) -> torch.optim.Optimizer:
    """The teacher's optimizer: Adam, AdamW with a positive `weight_decay`; fused where the device allows."""
    return adam(model.parameters(), config.model_lr, config.model_eps, config.weight_decay,
                decoupled=config.weight_decay > 0)


# --- diagnostics --------------------------------------------------------------------------------------

def log_diagnostics(model, diag: TaskBatcher, step: int, config, logger: Logger) -> None:
    """Gate weights per task, expert |cos|, per-task gradient cosines on shared parameters and open-loop
    videos, on a separate mixed batch (its own sampling stream, so training batches do not depend on how
    often this runs)."""
    tasks = list(config.source_tasks)
    data = model.preprocess(diag.sample(0))
    if model.encoder_mode == "moe":
        _log_gates(model, data, tasks, logger)
    present = sorted(set(data["task"].tolist()))
    if len(present) > 1:
        _log_gradient_cosines(model, data, present, tasks, logger)
    if "image" in model.decoders and config.batch_length > config.open_loop_context:
        ids = data["task"]
        for t, name in enumerate(tasks):
            rows = (ids == t).nonzero().flatten()[:VIDEO_SEQUENCES]
            if len(rows):
                sub = {key: v[rows] for key, v in data.items()}
                strip = model.open_loop(sub, config.open_loop_context)  # (B, T, 3H, W, 3)
                logger.video(f"openloop/{name}", label_rows(strip, ("truth", "model", "error")))


def _log_gates(model, data: dict, tasks: list[str], logger: Logger) -> None:
    with torch.no_grad():
        weights = model.gate_weights(torch.arange(len(tasks), device=model.device)).float().cpu()  # (K, N)
    for t, name in enumerate(tasks):
        for i, w in enumerate(weights[t].tolist()):
            logger.scalar(f"gate/{name}/expert{i}", w)
    sub = {key: v[:DIAG_SEQUENCES] for key, v in data.items()}
    for name, value in model.expert_diagnostics(sub).items():
        logger.scalar(f"experts/{name.replace('expert_', '')}", value)


def _log_gradient_cosines(model, data: dict, present: list[int], tasks: list[str], logger: Logger) -> None:
    weighted, _, _ = model.task_losses(data)
    grads, *_ = per_task_gradients(model, weighted, present)
    model.zero_grad(set_to_none=True)
    cos = cosine_matrix(grads).cpu()  # (P, P)
    pairs = []
    for a in range(len(present)):
        for b in range(a + 1, len(present)):
            value = float(cos[a, b])
            pairs.append(value)
            logger.scalar(f"grad_cos/{tasks[present[a]]}|{tasks[present[b]]}", value)
    logger.scalar("grad_cos/mean", float(np.mean(pairs)))
    logger.scalar("grad_cos/conflict_fraction", float(np.mean([v < 0 for v in pairs])))
