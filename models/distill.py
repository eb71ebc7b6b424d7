"""Teacher distillation for the student world model: projection, relevance weights, progressive
pruning of source-task views, and the three distillation losses (`comet`, `vid2act`, `reward`).

The distiller holds a frozen teacher that is never registered as a submodule, so the teacher's
weights are in no optimizer, not in the distiller's `state_dict` (the teacher is reloaded from its
own file on resume) and not switched to train mode by `train()`.

Design decisions (see also docs/architecture.md, "Student agent and the distillation hook"):
* Gradients of the matching term flow into the student through its posterior feature s: shaping
  the student's latents is the point of distillation. They also train the projection P.
* The relevance network sees sg(s): relevance is a read-out of how well each teacher view explains
  the student, and must not become a second path that pushes the student's latents around. It is
  trained by the same loss through the weights w (so it learns to weight the views whose
  projection matches the student best); below the floor a weight gets no gradient.
* The pruning EMA tracks the raw softmax weight w_k (not the floored one), so the floor keeps every
  active view learning without hiding which views the relevance network rates low.
* Update counting is internal (`updates`): the `distill_weight` schedule and `prune_every` count
  distillation updates, whatever the caller's step means.
* `distill_direction: student_to_teacher` (comet only) replaces P(t_k, k) ~ s by Q(s, k) ~ t_k. Pulling
  s toward a regression of s from teacher features shrinks what the teacher cannot explain, i.e. the
  target-specific part of s; predicting the teacher from s only asks s to contain the teacher's
  information. The specified direction stays the default (measurements: docs/benchmarks.md).

Shape legend: V active task views, K source tasks, B batch, T time, Ft teacher feature size,
Fs student feature size, U hidden units.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import tools

from .networks import MLP
from .world_model import OBS_KEYS

MODES = ("comet", "vid2act", "reward")
DIRECTIONS = ("teacher_to_student", "student_to_teacher")
# Encoder each mode needs from the teacher: comet's pruning saves work only because a MoE teacher's
# experts are shared by all views; vid2act is defined by its label-conditioned CNN.
MODE_ENCODER = {"comet": "moe", "vid2act": "label_cnn"}


class DistillError(ValueError):
    """A teacher or config that cannot be used for distillation; the message says why and what to do."""


def check_compatible(config, teacher, student_obs_shapes: dict | None = None, act_dim: int | None = None) -> None:
    """Raise DistillError unless `teacher` can read the student's batches and suits `distill_mode`.

    The teacher takes the student's own (preprocessed) batch, so every observation key the teacher
    encodes must be present in the student's data with the same shape, and the action sizes must agree.
    """
    mode = config["distill_mode"]
    if mode not in MODES:
        raise DistillError(f"distill_mode must be one of {MODES}, got '{mode}'")
    need = MODE_ENCODER.get(mode)
    if need is not None and teacher.encoder_mode != need:
        hint = {"moe": "pretrain it with --teacher_encoder_mode moe",
                "label_cnn": "pretrain it with --teacher_encoder_mode label_cnn "
                             "(configs: metaworld_teacher_label_cnn_pretrain)"}[need]
        raise DistillError(f"distill_mode '{mode}' needs a '{need}' teacher, but the teacher's encoder is "
                           f"'{teacher.encoder_mode}'; {hint}, or pick the matching --distill_mode")
    student_keys = OBS_KEYS.get(config["obs"])
    if student_keys is None:
        raise DistillError(f"obs must be one of {sorted(OBS_KEYS)}, got '{config['obs']}'")
    missing = [k for k in teacher.obs_keys if k not in student_keys]
    if missing:
        raise DistillError(f"the teacher was trained on obs '{teacher.config['obs']}' and reads "
                           f"{list(teacher.obs_keys)}, "
                           f"but the student runs with obs '{config['obs']}' and has no {missing}; run the student "
                           f"with --obs {teacher.config['obs']} (or 'both') or use a teacher trained on "
                           f"'{config['obs']}'")
    if student_obs_shapes:
        for key in teacher.obs_keys:
            have, want = tuple(student_obs_shapes.get(key, ())), tuple(teacher.obs_shapes[key])
            if have != want:
                raise DistillError(f"observation '{key}' has shape {have} in the student but {want} in the teacher")
    if act_dim is not None and int(act_dim) != teacher.act_dim:
        raise DistillError(f"action size {act_dim} of the student differs from the teacher's {teacher.act_dim}")


class Distiller(nn.Module):
    """Distillation loss for the student world model, `loss(data, post, wm, step) -> (loss, metrics)`.

    comet:   L = sum_{k active} mean_{b,t}(max(floor, w_k) * |P(t_k, k) - s|^2) / Fs with
             w = softmax over the active views of g([t_k, sg(s)]); the lowest-EMA view is pruned
             every `prune_every` updates down to `min_active_tasks`. With `distill_direction:
             student_to_teacher` the matched pair is (Q(s, k), t_k), normalised by Ft.
    vid2act: the same with an unconditioned Linear projection, all views, no pruning.
    reward:  coef * mean_{b,t}(r_student(s) - r_teacher(t_k*, k*))^2 where k* is the view whose
             reward head best predicts the target task's observed rewards (EMA of a softmax over
             the negative per-view reward errors); no projection, no trainable parameters.

    Cost knobs (the teacher's encoder dominates a distillation update): `teacher_precision` (auto:
    bf16 encoder where the hardware has native bf16, 16: always, 32: never); `distill_batch: n`
    distils on the first n sequences only.
    """

    def __init__(self, teacher: nn.Module, student_feat: int, config, logger=None, verbose: bool = True):
        super().__init__()
        c = config
        self.mode = c["distill_mode"]
        if self.mode not in MODES:
            raise DistillError(f"distill_mode must be one of {MODES}, got '{self.mode}'")
        # Kept out of the module tree on purpose (see the module docstring).
        object.__setattr__(self, "teacher", teacher)
        teacher.eval()
        teacher.requires_grad_(False)
        self.task_names = list(teacher.task_names)
        self.n_tasks = k = len(self.task_names)
        self.teacher_feat = ft = int(teacher.feat_size)
        self.student_feat = fs = int(student_feat)
        self.floor = float(c["relevance_floor"])
        self.ema_decay = float(c["relevance_ema"])
        self.sample = bool(c["teacher_sample"])
        self.weight_fn = tools.schedule(c["distill_weight"])
        self.reward_coef = float(c["reward_distill_coef"])
        self.teacher_precision = str(c.get("teacher_precision", "auto"))
        if self.teacher_precision not in ("auto", "16", "32"):
            raise DistillError(f"teacher_precision must be auto, 16 or 32, got '{self.teacher_precision}'")
        self._bf16: dict[str, bool] = {}  # per device type, decided on first use
        self.distill_batch = int(c.get("distill_batch", 0))
        assert self.distill_batch >= 0, f"distill_batch must be >= 0, got {self.distill_batch}"
        self.conditional = bool(c["conditional_distill"]) and self.mode == "comet"
        self.prune_every = int(c["prune_every"]) if self.mode == "comet" else 0
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

        direction = c.get("distill_direction", "teacher_to_student")
        if direction not in DIRECTIONS:
            raise DistillError(f"distill_direction must be one of {DIRECTIONS}, got '{direction}'")
        self.to_teacher = direction == "student_to_teacher" and self.mode == "comet"
        if self.mode == "comet":
            inp, out = (fs, ft) if self.to_teacher else (ft, fs)
            self.proj = MLP(inp, out, c["distill_hidden"], 1, c["act"], False, n_tasks=k if self.conditional else 0)
        elif self.mode == "vid2act":
            self.proj = nn.Linear(ft, fs)
        else:
            self.proj = None
        self.relevance = (MLP(ft + fs, 1, c["relevance_hidden"], 1, c["act"], False)
                          if self.mode != "reward" else None)

        # Pruning state; buffers so that it travels with state_dict for resume.
        self.register_buffer("active", torch.ones(k, dtype=torch.bool))
        self.register_buffer("ema", torch.full((k,), 1.0 / k))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_active())
        self._refresh_active()

    # --- module plumbing ----------------------------------------------------------------------

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda() must move the unregistered teacher too.
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        """Train/eval the distiller's own layers; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def get_extra_state(self) -> dict:
        return {"source_tasks": list(self.task_names), "distill_mode": self.mode,
                "conditional": self.conditional, "to_teacher": self.to_teacher}

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise DistillError(f"distiller state was saved for {state}, but this run distills {mine}; resume "
                               f"with the same teacher and --distill_mode / --conditional_distill / "
                               f"--distill_direction")

    def _refresh_active(self) -> None:
        """Python-side copies of the active set and the update count (no device sync per update)."""
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
            for event in self._unlogged:
                logger.event("prune", **event)
            self._unlogged = []

    # --- pieces (public so tests and benchmarks can probe them) --------------------------------

    @torch.no_grad()
    def teacher_features(self, data: dict, tasks: Sequence[int] | None = None) -> torch.Tensor:
        """Teacher posterior features of the student's batch under the given (default: active) views:
        (V, B, T, Ft). Experts run once; pruned views are not computed."""
        tasks = self.active_ids if tasks is None else list(tasks)
        bf16 = self.teacher_bf16(data["action"].device)
        return self.teacher.task_features(data, tasks, sample=self.sample, encoder_bf16=bf16).float()

    def teacher_bf16(self, device: torch.device) -> bool:
        """Whether the teacher's encoder runs in bf16 on `device`: `teacher_precision` 16 always, 32 never,
        auto where the hardware has native bf16 arithmetic (a CPU with AVX-512 BF16/AMX through oneDNN,
        a CUDA GPU that supports it); elsewhere bf16 is emulated and would be slower than float32."""
        if self.teacher_precision != "auto":
            return self.teacher_precision == "16"
        if device.type not in self._bf16:
            if device.type == "cpu":
                native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
            elif device.type == "cuda":
                native = bool(torch.cuda.is_bf16_supported())
            else:
                native = False
            self._bf16[device.type] = native
        return self._bf16[device.type]

    def project(self, x: torch.Tensor, tasks: Sequence[int] | None = None) -> torch.Tensor:
        """The projection for the views `tasks` (default: active): P(t_k, k) (V, B, T, Ft) -> (V, B, T, Fs);
        with `distill_direction: student_to_teacher`, Q(s, k) (V, B, T, Fs) -> (V, B, T, Ft)."""
        size = self.student_feat if self.to_teacher else self.teacher_feat
        assert x.shape[-1] == size, f"projection input {tuple(x.shape)}, expected last size {size}"
        if self.conditional:
            ids = self._ids if tasks is None else torch.as_tensor(list(tasks), device=x.device)
            assert ids.shape == x.shape[:1], f"one task id per view: {tuple(ids.shape)} vs {tuple(x.shape)}"
            return self.proj(x, ids)
        return self.proj(x)

    def weights(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Relevance w = softmax over the views of g([t_k, sg(s)]): (V, B, T)."""
        s = s.detach().unsqueeze(0).expand(t.shape[0], *s.shape)  # (V, B, T, Fs)
        alpha = self.relevance(torch.cat([t, s.to(t.dtype)], -1)).squeeze(-1)  # (V, B, T)
        return torch.softmax(alpha.float(), 0)

    # --- the hook -----------------------------------------------------------------------------

    def loss(self, data: dict, post: dict, wm, step: int) -> tuple[torch.Tensor, dict]:
        """Distillation loss for one world-model update (already scaled by `distill_weight`).

        data: the student's preprocessed batch (B, T, ...); post: its posterior states (B, T, ...)
        with gradients; wm: the student world model; step: the caller's step, used only to label
        pruning events. Returns (scalar loss, flat dict of floats).
        """
        scale = self.weight_fn(self.n_updates)
        s = wm.dynamics.get_feat(post).float()  # (B, T, Fs)
        assert s.shape[-1] == self.student_feat, f"student feature size {s.shape[-1]}, expected {self.student_feat}"
        b = s.shape[0]
        if 0 < self.distill_batch < b:
            # Replay windows are sampled uniformly, so the first n sequences are a uniform subset.
            n = self.distill_batch
            data = {k: v[:n] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b else v
                    for k, v in data.items()}
            s = s[:n]
        if scale == 0.0:
            # A schedule that has decayed to zero: the teacher is not run at all (relevance EMAs and
            # pruning pause with it).
            raw, names, values = s.new_zeros(()), [], []
        elif self.mode == "reward":
            raw, names, values = self._reward_loss(data, s, wm)
        else:
            raw, names, values = self._latent_loss(data, s)
        self.n_updates += 1
        self.updates.fill_(self.n_updates)
        names = ["distill/loss", "distill/scale", "distill/active_tasks"] + names
        values = [raw.detach(), raw.new_tensor(scale), raw.new_tensor(float(len(self.active_ids)))] + values
        values += [self.ema[i] for i in range(self.n_tasks)]
        names += [f"distill/relevance_ema_{name}" for name in self.task_names]
        metrics = dict(zip(names, torch.stack([v.float() for v in values]).tolist()))  # one sync
        if self.prune_every and self.n_updates % self.prune_every == 0:
            self._maybe_prune(step)
        return scale * raw, metrics

    def _latent_loss(self, data: dict, s: torch.Tensor):
        t = self.teacher_features(data)  # (V, B, T, Ft)
        if self.to_teacher:
            pred, target, size = self.project(s.unsqueeze(0).expand(t.shape[0], *s.shape)), t, self.teacher_feat
        else:
            pred, target, size = self.project(t), s.unsqueeze(0), self.student_feat  # (V, B, T, Fs)
        w = self.weights(t, s)  # (V, B, T)
        dist = (pred - target).pow(2).sum(-1) / size  # (V, B, T)
        per_view = (torch.clamp(w, min=self.floor) * dist).mean((1, 2))  # (V,)
        mean_w = w.detach().mean((1, 2))  # (V,)
        self._update_ema(mean_w)
        names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
        names += [f"distill/match_{self.task_names[i]}" for i in self.active_ids]
        return per_view.sum(), names, list(mean_w) + list(dist.detach().mean((1, 2)))

    def _reward_loss(self, data: dict, s: torch.Tensor, wm):
        t = self.teacher_features(data)  # (V, B, T, Ft), all views (no pruning in this mode)
        with torch.no_grad():
            r_teacher = self.teacher.predict_reward(t, self._ids)  # (V, B, T)
            err = (r_teacher - data["reward"].float().unsqueeze(0)).pow(2).mean((1, 2))  # (V,)
            relevance = torch.softmax(-err, 0)  # (V,)
            self._update_ema(relevance)
            # Fixed by the EMA (so one noisy batch does not switch views), over the active views only.
            pos = self.ema[self._ids].argmax()
            target = r_teacher[pos]  # (B, T)
        r_student = wm.predict_reward(s)  # (B, T)
        raw = self.reward_coef * F.mse_loss(r_student.float(), target)
        names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
        names += [f"distill/reward_err_{self.task_names[i]}" for i in self.active_ids] + ["distill/reward_view"]
        return raw, names, list(relevance) + list(err) + [self._ids[pos].to(err.dtype)]

    # --- pruning ------------------------------------------------------------------------------

    @torch.no_grad()
    def _update_ema(self, mean_w: torch.Tensor) -> None:
        """EMA of each active view's mean weight; pruned views keep their last value."""
        old = self.ema[self._ids]
        self.ema.index_copy_(0, self._ids, self.ema_decay * old + (1 - self.ema_decay) * mean_w.float())

    @torch.no_grad()
    def _maybe_prune(self, step: int) -> dict | None:
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
            print(f"[distill] pruned source task '{event['task']}' at step {event['step']} (update "
                  f"{event['update']}, relevance EMA {event['ema']:.4f}); active: {', '.join(event['active'])}",
                  flush=True)
        return event
