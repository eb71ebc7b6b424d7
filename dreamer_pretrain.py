"""Stage 1: pretrain the multi-task teacher world model on the K source-task datasets.

    python dreamer_pretrain.py --configs defaults metaworld metaworld_teacher_moe_pretrain \
        --logdir logs/teacher --device cpu --seed 0

Writes `<logdir>/teacher.pt` (final), `<logdir>/latest.pt` (periodic), `config.yaml`,
`metrics.jsonl` and TensorBoard events. Re-running with the same logdir resumes from the step
reached, optimizer and sampling state included.

Shape legend: B batch, T sequence length, K source tasks, P tasks present in a batch,
G number of shared parameters (flattened).
"""
from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

import checkpoint
import replay
import tools
from logger import Logger
from methods import behaviour
from models import TEACHER_ARCH_KEYS, TeacherWorldModel, compile_heavy, config_mismatches, teacher_payload
from models.world_model import OBS_KEYS

STEP_KEYS = ("action", "reward", "discount", "is_first")
VIDEO_SEQUENCES = 2  # open-loop sequences shown per task
DIAG_SEQUENCES = 16  # sequences used for the expert |cos| diagnostic


class PretrainError(RuntimeError):
    """A pretraining input or state that cannot be used; the message says which and why."""


# --- data ----------------------------------------------------------------------------------------

def load_sources(config) -> tuple[list[dict], int, dict]:
    """Episodes of every source task (list index = task id), the action size and the obs shapes."""
    tasks, dirs = list(config.source_tasks), list(config.source_task_dirs)
    if not tasks:
        raise PretrainError("no source tasks: set source_tasks (and source_task_dirs), e.g. "
                            "--configs defaults metaworld metaworld_teacher_moe_pretrain")
    if len(dirs) != len(tasks):
        raise PretrainError(f"source_task_dirs has {len(dirs)} folders but source_tasks has {len(tasks)} tasks; "
                            f"give one folder per task, in the same order (task id = position in source_tasks)")
    if len(set(tasks)) != len(tasks):
        raise PretrainError(f"source_tasks lists a task twice: {tasks}")
    needed = list(OBS_KEYS[config.obs]) + list(STEP_KEYS)
    sources, act_dims, shapes = [], {}, {}
    for task, directory in zip(tasks, dirs):
        path = pathlib.Path(directory)
        try:
            files = replay.episode_files(path)
        except FileNotFoundError:
            raise PretrainError(f"source folder for task '{task}' not found: {path}") from None
        if not files:
            raise PretrainError(f"source folder for task '{task}' holds no episode files (*.npz): {path}; "
                                f"collect them with collect_data.py")
        episodes = replay.load_dir(path, keys=needed)
        if not episodes:
            raise PretrainError(f"no usable episode for task '{task}' in {path} ({len(files)} files; "
                                f"obs '{config.obs}' needs keys {needed})")
        first = next(iter(episodes.values()))
        act_dims[task] = first["action"].shape[-1]
        for key in OBS_KEYS[config.obs]:
            shapes.setdefault(key, {})[task] = tuple(first[key].shape[1:])
        sources.append(episodes)
    if len(set(act_dims.values())) != 1:
        raise PretrainError(f"source tasks disagree on the action size: {act_dims}")
    obs_shapes = {}
    for key, per_task in shapes.items():
        if len(set(per_task.values())) != 1:
            raise PretrainError(f"source tasks disagree on the '{key}' shape: {per_task}")
        obs_shapes[key] = next(iter(per_task.values()))
    if "image" in obs_shapes and obs_shapes["image"][:2] != tuple(config.size):
        raise PretrainError(f"episode images are {obs_shapes['image']} but config size is {list(config.size)}")
    return sources, next(iter(act_dims.values())), obs_shapes


class TaskBatcher:
    """Task-balanced (B, T) batches with per-sequence task ids.

    mixed: every batch holds floor(B/K) sequences of each task, and the B mod K remaining slots
    rotate over the tasks from one update to the next. round_robin: update i uses task i mod K only.
    """

    def __init__(self, sources: list[dict], batch: int, length: int, seed: int, mode: str, keys: list[str]):
        if mode not in ("mixed", "round_robin"):
            raise PretrainError(f"task_batching must be mixed | round_robin, got '{mode}'")
        self.k, self.batch, self.mode = len(sources), batch, mode
        per_task = batch if mode == "round_robin" else math.ceil(batch / self.k)
        self.replays = []
        for task, episodes in enumerate(sources):
            task_seed = int(np.random.SeedSequence([seed, task]).generate_state(1)[0])
            buffer = replay.Replay(episodes, per_task, length, task_seed, keys=keys)
            if not buffer.can_sample():
                longest = max(replay.episode_length(e) for e in episodes.values())
                raise PretrainError(f"task {task}: no episode is long enough for batch_length {length} "
                                    f"(longest has {longest} entries); lower --batch_length")
            self.replays.append(buffer)

    def counts(self, step: int) -> list[int]:
        """Sequences per task in update `step`."""
        if self.mode == "round_robin":
            return [self.batch if k == step % self.k else 0 for k in range(self.k)]
        base, extra = divmod(self.batch, self.k)
        counts = [base] * self.k
        for j in range(extra):
            counts[(step * extra + j) % self.k] += 1
        return counts

    def sample(self, step: int) -> dict:
        """One batch of numpy arrays (B, T, ...) plus 'task' (B,) int64."""
        parts, ids = [], []
        for task, n in enumerate(self.counts(step)):
            if n:
                chunk = self.replays[task].sample()
                parts.append({k: v[:n] for k, v in chunk.items()})
                ids.append(np.full(n, task, np.int64))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batch["task"] = np.concatenate(ids)
        return batch

    def state(self) -> list[str]:
        return [json.dumps(r.rng_state()) for r in self.replays]

    def set_state(self, states: list[str]) -> None:
        for r, s in zip(self.replays, states):
            r.set_rng_state(json.loads(s))


# --- gradients -----------------------------------------------------------------------------------

def per_task_gradients(model: TeacherWorldModel, weighted: torch.Tensor, tasks: list[int]):
    """Gradient of each present task's (weighted) loss: shared parameters as rows of G (P, G), and the
    summed gradients of the task-specific parameters."""
    shared = [p for _, p in model.shared_parameters()]
    specific = [p for _, p in model.task_parameters()]
    rows, specific_sum = [], [torch.zeros_like(p) for p in specific]
    for i, task in enumerate(tasks):
        grads = torch.autograd.grad(weighted[task], shared + specific, retain_graph=i < len(tasks) - 1,
                                    allow_unused=True)
        flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads[:len(shared)], shared)]
        rows.append(torch.cat(flat))
        for acc, g in zip(specific_sum, grads[len(shared):]):
            if g is not None:
                acc.add_(g)
    return torch.stack(rows), shared, specific, specific_sum


def pcgrad(grads: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """PCGrad (Yu et al. 2020) on G (P, G): each task's gradient is projected off every other task's
    gradient it conflicts with (negative dot product), visiting the others in random order; the
    projected gradients are summed. Returns (combined gradient (G,), fraction of conflicting pairs)."""
    p = grads.shape[0]
    norms_sq = (grads * grads).sum(1).clamp_min(1e-20)  # (P,)
    out = grads.clone()
    conflicts = 0
    for i in range(p):
        for j in torch.randperm(p, generator=generator).tolist():
            if j == i:
                continue
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / norms_sq[j] * grads[j]
                conflicts += 1
    return out.sum(0), conflicts / max(p * (p - 1), 1)


def cosine_matrix(grads: torch.Tensor) -> torch.Tensor:
    """Pairwise cosines of the rows of G (P, G): (P, P)."""
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return unit @ unit.t()


def assign(params: list[torch.nn.Parameter], grads) -> None:
    """Write gradients (a flat vector or one tensor per parameter) into `.grad`."""
    if torch.is_tensor(grads):
        grads = torch.split(grads, [p.numel() for p in params])
    for p, g in zip(params, grads):
        p.grad = g.reshape(p.shape).to(p.dtype)


# --- checkpoints ---------------------------------------------------------------------------------

def find_resume(logdir: pathlib.Path, device) -> tuple[pathlib.Path | None, dict | None]:
    """The checkpoint in `logdir` with the highest step (teacher.pt or latest.pt) and its payload, loaded
    once onto `device`; (None, None) if there is none."""
    best, best_payload = None, None
    for name in ("latest.pt", "teacher.pt"):
        path = logdir / name
        if path.is_file():
            payload = checkpoint.load(path, map_location=device)
            if best_payload is None or int(payload["step"]) > int(best_payload["step"]):
                best, best_payload = path, payload
    return best, best_payload


# --- main loop -----------------------------------------------------------------------------------

HELP_KEYS = ("source_tasks", "source_task_dirs", "teacher_encoder_mode", "n_experts", "use_orthogonal",
             "moe_temperature", "pretrain_iterations", "task_batching", "grad_surgery", "batch_size", "batch_length",
             "log_every", "checkpoint_every", "open_loop_context", "logdir", "device", "precision", "compile",
             "resume", "seed")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        defaults = tools.read_blocks()["defaults"]
        print(__doc__ + "\nMain flags (any config key is a flag; --configs picks blocks of configs.yaml):")
        for key in HELP_KEYS:
            print(f"  --{key:<22} default {defaults[key]!r}")
        return 0
    config = tools.load_config(argv, description=__doc__.splitlines()[0])
    if not config.logdir:
        raise PretrainError("--logdir is required")
    if config.grad_surgery not in ("none", "pcgrad"):
        raise PretrainError(f"grad_surgery must be none | pcgrad, got '{config.grad_surgery}'")
    if config.grad_surgery == "pcgrad" and config.task_batching != "mixed":
        raise PretrainError("grad_surgery pcgrad needs batches that mix tasks: use --task_batching mixed")
    logdir = pathlib.Path(config.logdir)
    tools.set_seed(config.seed)
    device = tools.get_device(config.device)
    if config.threads > 0:
        torch.set_num_threads(int(config.threads))

    sources, act_dim, obs_shapes = load_sources(config)
    keys = list(OBS_KEYS[config.obs]) + list(STEP_KEYS)
    batcher = TaskBatcher(sources, config.batch_size, config.batch_length, config.seed, config.task_batching, keys)
    diag = TaskBatcher(sources, config.batch_size, config.batch_length, config.seed + 1, "mixed", keys)
    k = len(config.source_tasks)

    model = TeacherWorldModel(config, act_dim, obs_shapes).to(device)
    opt_cls = torch.optim.AdamW if config.weight_decay > 0 else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=config.model_lr, eps=config.model_eps, weight_decay=config.weight_decay)

    step = 0
    resume_path, payload = find_resume(logdir, device) if logdir.exists() else (None, None)
    if resume_path is not None:
        if not config.resume:
            raise PretrainError(f"{logdir} already holds {resume_path.name}; pass --resume True to continue "
                                f"it or choose another --logdir")
        bad = config_mismatches(payload["config"], config, TEACHER_ARCH_KEYS)
        if payload.get("act_dim") != act_dim:
            bad.append(f"act_dim: checkpoint {payload.get('act_dim')}, data {act_dim}")
        if bad:
            raise PretrainError(f"cannot resume from {resume_path}: the model config changed: {bad}")
        try:
            model.load_state_dict(payload["model"], strict=True)
        except RuntimeError as err:
            raise PretrainError(f"cannot resume from {resume_path}: {' '.join(str(err).split())[:1000]}") from None
        if payload.get("optimizer") is not None:
            optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        if "batcher" in payload:
            batcher.set_state(payload["batcher"])
            diag.set_state(payload["diag_batcher"])
        if "torch_rng" in payload:
            torch.set_rng_state(payload["torch_rng"].cpu())
        print(f"resuming from {resume_path} at update {step}", file=sys.stderr)
    tools.save_config(config, logdir)
    if config.compile and device.type == "cuda":
        compile_heavy(model)

    logger = Logger(logdir, resume_step=step if resume_path else None)
    logger.event("pretrain_start", step=step, source_tasks=list(config.source_tasks),
                 source_task_dirs=list(config.source_task_dirs), encoder_mode=config.teacher_encoder_mode,
                 moe_temperature=config.moe_temperature, resumed_from=str(resume_path) if resume_path else None)

    teachers = None  # behaviour teachers, fitted after the world model

    def save(name: str) -> None:
        extra = {"batcher": batcher.state(), "diag_batcher": diag.state(), "torch_rng": torch.get_rng_state()}
        if teachers is not None:
            extra["behaviour"] = behaviour.payload(teachers)
        checkpoint.save(logdir / name, teacher_payload(model, optimizer, step, config, extra))

    total = config.pretrain_iterations
    generator = torch.Generator().manual_seed(config.seed)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # per name: per-task values exist only on updates whose batch held the task
    from tqdm import tqdm

    bar = tqdm(total=total, initial=min(step, total), disable=not config.progress, desc="pretrain", dynamic_ncols=True)
    last_time, last_step = time.time(), step
    log_time, log_step = last_time, step
    model.train()
    while step < total:
        batch = batcher.sample(step)
        data = model.preprocess(batch)
        weighted, metrics, _ = model.task_losses(data)
        if not math.isfinite(metrics["model_loss"]):
            raise FloatingPointError(f"non-finite teacher loss at update {step}: "
                                     f"{ {k: v for k, v in metrics.items() if '/' not in k} }; "
                                     f"lower --model_lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        present = sorted(set(data["task"].tolist()))
        if config.grad_surgery == "pcgrad" and len(present) > 1:
            grads, shared, specific, specific_sum = per_task_gradients(model, weighted, present)
            combined, conflict = pcgrad(grads, generator)
            assign(shared, combined)
            assign(specific, specific_sum)
            metrics["pcgrad_conflicts"] = conflict
        else:
            weighted.sum().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.model_grad_clip)
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at update {step} (loss {metrics['model_loss']:.4g}); "
                                     f"lower --model_lr or check the data")
        optimizer.step()
        step += 1
        metrics["grad_norm"] = grad_norm
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        bar.update(1)
        now = time.time()
        if now - last_time > 2.0 or step == total:
            bar_rate = (step - last_step) / max(now - last_time, 1e-9)
            last_time, last_step = now, step
            bar.set_postfix(loss=f"{metrics['model_loss']:.2f}", ups=f"{bar_rate:.2f}")

        if step % config.log_every == 0 or step == total:
            # Per-task values average over the updates whose batch held that task.
            for name, value in sums.items():
                logger.scalar(f"train/{name}", value / counts[name])
            logger.scalar("train/updates_per_sec", (step - log_step) / max(time.time() - log_time, 1e-9))
            log_diagnostics(model, diag, step, config, logger)
            logger.write(step)
            sums, counts = {}, {}
            log_time, log_step = time.time(), step  # the diagnostics' own time is not counted
        if step % config.checkpoint_every == 0 and step < total:
            save("latest.pt")
    bar.close()
    # Behaviour teachers read the raw state, not the world model: fitted once it is done (cheap, seeded).
    teachers = behaviour.fit(config, config.source_tasks, config.source_task_dirs, device,
                             log=lambda line: print(line, file=sys.stderr))
    save("teacher.pt")
    logger.event("pretrain_done", step=step, path=str(logdir / "teacher.pt"))
    logger.close()
    print(f"teacher written to {logdir / 'teacher.pt'} (update {step})", file=sys.stderr)
    return 0


def log_diagnostics(model: TeacherWorldModel, diag: TaskBatcher, step: int, config, logger: Logger) -> None:
    """Gate weights per task, expert |cos|, per-task gradient cosines on shared parameters and
    open-loop videos, on a separate mixed batch (its own sampling stream, so training batches do
    not depend on how often this runs)."""
    tasks = list(config.source_tasks)
    k = len(tasks)
    batch = diag.sample(0)
    data = model.preprocess(batch)
    if model.encoder_mode == "moe":
        with torch.no_grad():
            weights = model.gate_weights(torch.arange(k, device=model.device)).float().cpu()  # (K, N)
        for t, name in enumerate(tasks):
            for i, w in enumerate(weights[t].tolist()):
                logger.scalar(f"gate/{name}/expert{i}", w)
        sub = {key: v[:DIAG_SEQUENCES] for key, v in data.items()}
        for name, value in model.expert_diagnostics(sub).items():
            logger.scalar(f"experts/{name.replace('expert_', '')}", value)

    present = sorted(set(data["task"].tolist()))
    if len(present) > 1:
        weighted, _, _ = model.task_losses(data)
        grads, *_ = per_task_gradients(model, weighted, present)
        model.zero_grad(set_to_none=True)
        cos = cosine_matrix(grads).cpu()
        pairs = []
        for a in range(len(present)):
            for b in range(a + 1, len(present)):
                value = float(cos[a, b])
                pairs.append(value)
                logger.scalar(f"grad_cos/{tasks[present[a]]}|{tasks[present[b]]}", value)
        logger.scalar("grad_cos/mean", float(np.mean(pairs)))
        logger.scalar("grad_cos/conflict_fraction", float(np.mean([v < 0 for v in pairs])))

    if "image" in model.decoders and config.batch_length > config.open_loop_context:
        ids = data["task"]
        for t, name in enumerate(tasks):
            rows = (ids == t).nonzero().flatten()[:VIDEO_SEQUENCES]
            if len(rows):
                sub = {key: v[rows] for key, v in data.items()}
                logger.video(f"openloop/{name}", model.open_loop(sub, config.open_loop_context))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (PretrainError, tools.ConfigError, checkpoint.CheckpointError, replay.NotEnoughData,
            FloatingPointError, behaviour.BehaviourError) as err:
        print(f"dreamer_pretrain: error: {err}", file=sys.stderr)
        sys.exit(2)
