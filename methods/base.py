"""The interface every distillation method implements, and the machinery methods share.

A method is one class (one file in this package, one entry in `methods.REGISTRY`). It may define
any of three hooks; a hook left as None is never called, so it changes nothing in that update:

* `world_model_loss(data, post, wm, step) -> (loss, metrics)`: added to the student's world-model
  loss. data: the preprocessed batch (B, T, ...); post: the student's posterior with gradients.
* `actor_loss(data, feat, actor, step) -> (loss, metrics)`: added to the actor's loss in the same
  update. feat: the student's posterior features of the real batch (B, T, F), detached.
* `critic_loss(data, feat, critic, step) -> (loss, metrics)`: added to the critic's loss.

A method's trainable parameters get one optimizer of the agent's; its state (`state_dict`, with
buffers and `get_extra_state`) travels in the student's checkpoint. The frozen teacher (and any
behaviour teachers) are held outside the module tree: in no optimizer, not in `state_dict` (they
are reloaded from the teacher file on resume), never switched to train mode.

`TeacherMethod` shares what the methods of this package use: teacher features (and states) of the
student's batch under the active source-task views, bf16 teacher encoder, the coefficient (a schedule, or
`auto`: held at a gradient share, methods/weight.py), the relevance EMA and its statistics, progressive
pruning of views and pruning events, and the two controls: a random teacher (`teacher_random_seed`) and
shuffled view labels (`shuffle_views`).

Shape legend: V active task views, K source tasks, B batch, T time, Ft teacher feature size,
Fs student feature size, A action size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

import configs
import tools
from models.teacher_io import reinitialise
from tools import OBS_KEYS, UsageError

from .targets import TARGETS, horizon
from .weight import ShareController, is_auto


class MethodError(UsageError, ValueError):
    """A teacher or config that cannot be used by a method; the message says why and what to do."""


class Method(nn.Module):
    """Base of all methods. Subclasses set `name` and define the hooks they need."""

    name = ""
    encoder: str | None = None  # teacher encoder mode the method needs (None: any)
    needs: tuple[str, ...] = ()  # behaviour teachers the method needs: "actor", "critic"
    world_model_loss = None
    actor_loss = None
    critic_loss = None


class TeacherMethod(Method):
    """A method that reads a frozen teacher. `weight_key` names the config schedule of its coefficient
    (counted in the method's own updates); `prunes` turns on progressive pruning (`prune_every`)."""

    weight_key = "distill_weight"
    prunes = False
    distill_targets: tuple[str, ...] = ("posterior",)  # the `distill_target` values the method implements
    shuffles = False  # whether the method reads view labels that `shuffle_views` can permute

    def __init__(self, teacher: nn.Module, student_feat: int, config, behaviour=None, logger=None,
                 verbose: bool = True):
        super().__init__()
        c = config
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "behaviour", behaviour)
        self._controls(c)
        teacher.eval()
        teacher.requires_grad_(False)
        for net in (getattr(behaviour, "actor", None), getattr(behaviour, "critic", None)):
            if net is not None:
                net.eval()
                net.requires_grad_(False)
        self.mode = self.name
        self.task_names = list(teacher.task_names)
        self.n_tasks = k = len(self.task_names)
        self.teacher_feat = int(teacher.feat_size)
        self.student_feat = int(student_feat)
        self.floor = float(c["relevance_floor"])
        self.ema_decay = float(c["relevance_ema"])
        self.sample = bool(c["teacher_sample"])
        self._coefficient(c)
        self.teacher_precision = str(c.get("teacher_precision", "auto"))
        if self.teacher_precision not in ("auto", "16", "32"):
            raise MethodError(f"teacher_precision must be auto, 16 or 32, got '{self.teacher_precision}'")
        self.distill_batch = int(c.get("distill_batch", 0))
        assert self.distill_batch >= 0, f"distill_batch must be >= 0, got {self.distill_batch}"
        self.prune_every = int(c["prune_every"]) if self.prunes else 0
        self.min_active = int(c["min_active_tasks"])
        self.prune_threshold = float(c["prune_threshold"])
        assert self.min_active >= 1, f"min_active_tasks must be >= 1, got {self.min_active}"
        assert 0.0 <= self.floor < 1.0, f"relevance_floor must lie in [0, 1), got {self.floor}"
        assert 0.0 <= self.ema_decay < 1.0, f"relevance_ema must lie in [0, 1), got {self.ema_decay}"
        self.verbose = verbose
        self.events: list[dict] = []  # every pruning event of this process, in order
        self._unlogged: list[dict] = []  # events that happened while no logger was set
        self._logger = None
        self.logger = logger
        # Pruning state; buffers so that it travels with state_dict for resume.
        self.register_buffer("active", torch.ones(k, dtype=torch.bool))
        self.register_buffer("ema", torch.full((k,), 1.0 / k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # The active ids as a tensor (V,), derived from `active`: a buffer so `.to(device)` moves it, not saved.
        self.register_buffer("_ids", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_active())
        self._refresh_active()

    def _controls(self, c) -> None:
        """What is matched (`distill_target`, `distill_horizon`) and the controls: a random teacher re-initialised
        in place from `teacher_random_seed` (>= 0), view labels permuted per batch (`shuffle_views`)."""
        self.target = str(c.get("distill_target", "posterior"))
        if self.target not in TARGETS:
            raise MethodError(f"distill_target must be one of {', '.join(TARGETS)}, got '{self.target}'")
        if self.target not in self.distill_targets:
            raise MethodError(f"distill_mode '{self.name}' matches only {', '.join(self.distill_targets)}, not "
                              f"distill_target '{self.target}'; use comet or vid2act for transition targets")
        self.horizon = horizon(self.target, int(c.get("distill_horizon", 5)))
        length = int(c.get("batch_length", 0))
        if self.target == "open_loop" and not 1 <= self.horizon < length:
            raise MethodError(f"distill_horizon must lie in [1, batch_length {length}), got {self.horizon}")
        self.random_seed = int(c.get("teacher_random_seed", -1))
        if self.random_seed >= 0:
            reinitialise(self.teacher, self.random_seed)
        self.shuffle = bool(c.get("shuffle_views", False))
        if self.shuffle and not self.shuffles:
            raise MethodError(f"shuffle_views needs a method whose projection reads the view labels (comet with "
                              f"conditional_distill True); distill_mode '{self.name}' has none to shuffle")
        self.shuffle_seed = int(c.get("seed", 0))

    def _coefficient(self, c) -> None:
        """The coefficient of the method's term: a schedule of its updates, or (`auto`) a ShareController."""
        spec = c[self.weight_key]
        self.auto = None
        self.weight_fn = None
        if not is_auto(spec):
            self.weight_fn = configs.schedule(spec)
            return
        if int(c.get("grad_share_every", 0)) <= 0:
            raise MethodError(f"{self.weight_key} auto is held at a measured gradient share: set grad_share_every "
                              f"> 0 (world-model updates between measurements, e.g. 20)")
        try:
            self.auto = ShareController.from_config(c)
        except ValueError as err:
            raise MethodError(str(err)) from None

    # --- module plumbing ----------------------------------------------------------------------

    def _frozen(self) -> list[nn.Module]:
        nets = [self.teacher]
        nets += [n for n in (getattr(self.behaviour, "actor", None), getattr(self.behaviour, "critic", None)) if n]
        return nets

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda() must move the unregistered teacher (and behaviour teachers) too.
        super()._apply(fn, *args, **kwargs)
        for net in self._frozen():
            net._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        """Train/eval the method's own layers; the teachers stay in eval mode."""
        super().train(mode)
        for net in self._frozen():
            net.eval()
        return self

    def get_extra_state(self) -> dict:
        state = {"source_tasks": list(self.task_names), "distill_mode": self.mode}
        # Only what differs from the defaults, so checkpoints written before these options resume unchanged.
        if self.target != "posterior":
            state.update(distill_target=self.target, distill_horizon=self.horizon)
        if self.random_seed >= 0:
            state["teacher_random_seed"] = self.random_seed
        if self.shuffle:
            state["shuffle_views"] = True
        if self.auto is not None:
            state["distill_weight"] = "auto"
        return state

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise MethodError(f"distiller state was saved for {state}, but this run distills {mine}; resume "
                              f"with the same teacher and --distill_mode / --conditional_distill / "
                              f"--distill_direction / --distill_target / --teacher_random_seed / --shuffle_views / "
                              f"--distill_weight")

    def _refresh_active(self) -> None:
        """Python-side copies of the active set and the update count, and `_ids` (V,): read from the device
        only here (construction, resume, pruning), never in an ordinary update."""
        self.n_updates = int(self.updates)
        self.active_ids: list[int] = [i for i, a in enumerate(self.active.tolist()) if a]
        self._ids = torch.tensor(self.active_ids, dtype=torch.long, device=self.active.device)  # (V,)

    @property
    def active_tasks(self) -> list[str]:
        """Names of the source tasks still distilled from."""
        return [self.task_names[i] for i in self.active_ids]

    def set_active(self, tasks: Sequence[int | str]) -> None:
        """Restrict distillation to `tasks` (ids or names), e.g. to start from a known subset or to
        measure the cost of a pruned state directly. Not a pruning event: nothing is logged."""
        ids = sorted({t if isinstance(t, int) else self.task_names.index(t) for t in tasks})
        assert ids and all(0 <= i < self.n_tasks for i in ids), f"tasks {tasks} not in {self.task_names}"
        self.active.zero_()
        self.active[ids] = True
        self._refresh_active()

    @property
    def logger(self):
        """Where pruning events go (`logger.event("prune", step=, task=, ema=, ...)`); may be set late:
        events that happened without one are written when it is set."""
        return self._logger

    @logger.setter
    def logger(self, logger) -> None:
        self._logger = logger
        if logger is not None:
            logger.layout(tensorboard_layout())
            for event in self._unlogged:
                logger.event("prune", **event)
            self._unlogged = []

    # --- teacher reads --------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_features(self, data: dict, tasks: Sequence[int] | None = None, return_states: bool = False):
        """Teacher posterior features of the student's batch under the given (default: active) views:
        (V, B, T, Ft), and with `return_states` also the posterior states (V, B, T, ...). Experts run once;
        pruned views are not computed."""
        tasks = self.active_ids if tasks is None else list(tasks)
        bf16 = self.teacher_bf16(data["action"].device)
        out = self.teacher.task_features(data, tasks, sample=self.sample, encoder_bf16=bf16,
                                         return_states=return_states)
        return (out[0].float(), out[1]) if return_states else out.float()

    def teacher_bf16(self, device: torch.device) -> bool:
        """Whether the teacher's encoder runs in bf16 on `device`: `teacher_precision` 16 always, 32 never,
        auto where the hardware has native bf16 arithmetic (a CPU with AVX-512 BF16/AMX through oneDNN,
        a CUDA GPU that supports it); elsewhere bf16 is emulated and would be slower than float32."""
        if self.teacher_precision != "auto":
            return self.teacher_precision == "16"
        return tools.native_bf16(device)

    @torch.no_grad()
    def reward_relevance(self, data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """How well each active view's reward head predicts the batch's observed rewards: returns the
        views' reward predictions (V, B, T), their squared errors (V,) and the batch relevance
        softmax(-err) (V,), which also moves the relevance EMA."""
        t = self.teacher_features(data)  # (V, B, T, Ft)
        r_teacher = self.teacher.predict_reward(t, self._ids)  # (V, B, T)
        err = (r_teacher - data["reward"].float().unsqueeze(0)).pow(2).mean((1, 2))  # (V,)
        relevance = torch.softmax(-err, 0)  # (V,)
        self.update_ema(relevance)
        return r_teacher, err, relevance

    def subset(self, data: dict, *tensors: torch.Tensor) -> tuple[dict, ...]:
        """The first `distill_batch` sequences of `data` and of each (B, ...) tensor (all of them when 0).
        Replay windows are sampled uniformly, so the first n sequences are a uniform subset."""
        b = data["action"].shape[0]
        n = self.distill_batch
        if not 0 < n < b:
            return (data, *tensors)
        data = {k: v[:n] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b else v for k, v in data.items()}
        return (data, *[x[:n] for x in tensors])

    def view_labels(self) -> torch.Tensor:
        """The source-task label of each active view for this update (V,): the views' own ids, or with
        `shuffle_views` a uniformly random permutation of them, drawn from (seed, update) alone so that a
        resumed run draws the same ones."""
        if not self.shuffle or len(self.active_ids) < 2:
            return self._ids
        generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + self.n_updates)
        order = torch.randperm(len(self.active_ids), generator=generator)
        return self._ids[order.to(self._ids.device, non_blocking=True)]  # a blocking copy would sync

    # --- one update ------------------------------------------------------------------------------

    def coefficient(self) -> float | torch.Tensor:
        """The coefficient of this update: the schedule's value (float), or the auto controller's (0-d tensor)."""
        return self.auto.coefficient() if self.auto is not None else self.weight_fn(self.n_updates)

    def record_share(self, share: torch.Tensor) -> None:
        """The gradient share of the last update's term (models/grad_share.py); moves an `auto` coefficient."""
        if self.auto is not None:
            self.auto.update(share)

    def run_update(self, compute, ref: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """Count one update of this method: `compute() -> (raw loss, metric names, metric values)` runs
        unless the coefficient schedule is at zero (then the teacher is not run at all, and relevance EMAs
        and pruning pause); returns (scale * raw, metrics: 0-d device tensors, numbers the host knows).
        Nothing is read from the device, except by a pruning decision (every `prune_every` updates)."""
        scale = self.coefficient()
        if self.auto is None and scale == 0.0:
            raw, names, values = ref.new_zeros(()), [], []
        else:
            raw, names, values = compute()
        self.n_updates += 1
        self.updates.fill_(self.n_updates)
        metrics = {"distill/loss": raw.detach().float(),
                   "distill/scale": scale.detach().float() if torch.is_tensor(scale) else float(scale),
                   "distill/active_tasks": float(len(self.active_ids))}
        metrics.update((name, v.detach().float()) for name, v in zip(names, values))
        # A copy: update_ema changes `ema` in place in later updates.
        ema = self.ema.detach().clone().unbind()
        metrics.update((f"distill/relevance_ema_{name}", ema[i]) for i, name in enumerate(self.task_names))
        if self.prune_every and self.n_updates % self.prune_every == 0:
            self.maybe_prune(step)
        return scale * raw, metrics

    # --- relevance EMA and pruning -------------------------------------------------------------

    def relevance_stats(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[list[str], list]:
        """How spread the relevance is, from the raw weights w (V, ...) over the active views (the views on
        axis 0, positions after it, `mask` marking the positions that count): the mean entropy of w over the
        positions divided by log V (1: uniform, 0: all weight on one view; 0 with one view) and, per view, the
        share of positions where it has the largest weight. Returns (metric names, 0-d tensors)."""
        v = w.shape[0]
        flat = w.detach().float().reshape(v, -1)  # (V, P)
        keep = torch.ones_like(flat[0]) if mask is None else mask.reshape(-1).to(flat.dtype)  # (P,)
        count = keep.sum().clamp(min=1)
        entropy = -(flat * flat.clamp(min=1e-12).log()).sum(0)  # (P,)
        norm = math.log(v) if v > 1 else 1.0
        # scatter, not one_hot: one_hot reads the ids' range back to check it (a host sync off CUDA).
        top = torch.zeros_like(flat.t()).scatter_(1, flat.argmax(0)[:, None], 1.0)  # (P, V)
        argmax = (top * keep[:, None]).sum(0) / count  # (V,)
        names = ["distill/relevance_entropy"] + [f"distill/relevance_argmax_{self.task_names[i]}"
                                                 for i in self.active_ids]
        return names, [(entropy * keep).sum() / count / norm] + list(argmax)

    @torch.no_grad()
    def update_ema(self, mean_w: torch.Tensor) -> None:
        """EMA of each active view's mean weight; pruned views keep their last value."""
        old = self.ema[self._ids]
        self.ema.index_copy_(0, self._ids, self.ema_decay * old + (1 - self.ema_decay) * mean_w.float())

    @torch.no_grad()
    def maybe_prune(self, step: int) -> dict | None:
        """Drop the lowest-EMA active view if more than `min_active_tasks` remain (and, with a
        positive `prune_threshold`, only if its EMA is below it). Returns the event or None."""
        if len(self.active_ids) <= self.min_active:
            return None
        emas = self.ema[self._ids].tolist()
        pos = min(range(len(emas)), key=emas.__getitem__)
        if self.prune_threshold > 0 and emas[pos] >= self.prune_threshold:
            return None
        task = self.active_ids[pos]
        self.active[task] = False
        self._refresh_active()
        event = {"step": int(step), "update": self.n_updates, "task": self.task_names[task],
                 "ema": float(emas[pos]), "active": self.active_tasks}
        self.events.append(event)
        if self._logger is not None:
            self._logger.event("prune", **event)
        else:
            self._unlogged.append(event)
        if self.verbose:
            from tqdm import tqdm  # printed above a running progress bar, not glued onto its line

            tqdm.write(f"[distill] pruned source task '{event['task']}' at step {event['step']} (update "
                       f"{event['update']}, relevance EMA {event['ema']:.4f}); active: {', '.join(event['active'])}")
        return event


def tensorboard_layout() -> dict:
    """One TensorBoard chart per distillation quantity with every source task in it (Custom Scalars tab);
    the student loop logs the methods' metrics under `train/`."""
    return {"distillation": {
        "weight per source task (train/distill/weight_<task>)": ["train/distill/weight_.*"],
        "relevance EMA per source task (train/distill/relevance_ema_<task>)": ["train/distill/relevance_ema_.*"],
        "active source tasks": ["train/distill/active_tasks"],
        "distillation loss": ["train/distill/loss", "train/distill/scale"],
        "match / error per source task": ["train/distill/(match|reward_err|action_err|teacher_q)_.*"],
        "gradient share r = |grad L_distill| / |grad L_wm| (encoder + RSSM)": ["train/distill/grad_share"],
        "gradient norms (encoder + RSSM)": ["train/distill/grad_norm_.*"],
        "relevance entropy / log V": ["train/distill/relevance_entropy"],
        "share of positions where a view has the largest relevance": ["train/distill/relevance_argmax_.*"],
        "state probe R^2 (student, teacher views)": ["probe/.*"],
    }}


def check_compatible(config, teacher, student_obs_shapes: dict | None = None, act_dim: int | None = None,
                     method: type | None = None) -> None:
    """Raise MethodError unless `teacher` can read the student's batches and suits the method.

    The teacher takes the student's own (preprocessed) batch, so every observation key the teacher
    encodes must be present in the student's data with the same shape, and the action sizes must agree.
    """
    if method is None:
        from methods import method_class

        method = method_class(config["distill_mode"])
    need = method.encoder
    if need is not None and teacher.encoder_mode != need:
        hint = {"moe": "pretrain it with --teacher_encoder_mode moe",
                "label_cnn": "pretrain it with --teacher_encoder_mode label_cnn "
                             "(configs: metaworld_teacher_label_cnn_pretrain)"}[need]
        raise MethodError(f"distill_mode '{method.name}' needs a '{need}' teacher, but the teacher's encoder is "
                          f"'{teacher.encoder_mode}'; {hint}, or pick the matching --distill_mode")
    student_keys = OBS_KEYS.get(config["obs"])
    if student_keys is None:
        raise MethodError(f"obs must be one of {sorted(OBS_KEYS)}, got '{config['obs']}'")
    missing = [k for k in teacher.obs_keys if k not in student_keys]
    if missing:
        raise MethodError(f"the teacher was trained on obs '{teacher.config['obs']}' and reads "
                          f"{list(teacher.obs_keys)}, "
                          f"but the student runs with obs '{config['obs']}' and has no {missing}; run the student "
                          f"with --obs {teacher.config['obs']} (or 'both') or use a teacher trained on "
                          f"'{config['obs']}'")
    if student_obs_shapes:
        for key in teacher.obs_keys:
            have, want = tuple(student_obs_shapes.get(key, ())), tuple(teacher.obs_shapes[key])
            if have != want:
                raise MethodError(f"observation '{key}' has shape {have} in the student but {want} in the teacher")
    if act_dim is not None and int(act_dim) != teacher.act_dim:
        raise MethodError(f"action size {act_dim} of the student differs from the teacher's {teacher.act_dim}")
