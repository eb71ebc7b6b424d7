"""`comet`: the student's latent matched to task-conditioned projections of the teacher's task views,
weighted by learned relevance, with progressive pruning of the least relevant source tasks.

L = sum_{k active} mean_{b,t}(max(floor, w_k) * |P(t_k, k) - s|^2) / Fs, w = softmax over the active
views of g([t_k, sg(s)]); the lowest-EMA view is pruned every `prune_every` updates down to
`min_active_tasks`. With `distill_direction: student_to_teacher` the matched pair is (Q(s, k), t_k),
normalised by Ft. `distill_target` decides what t_k and s are (methods/targets.py): posterior features
(default), one-step transition predictions (`prior`) or k-step open-loop predictions (`open_loop`, the mean
then runs over the valid (start, step) pairs instead of (b, t)).

Design decisions:
* Gradients of the matching term flow into the student through its posterior feature s: shaping
  the student's latents is the point of distillation. They also train the projection P.
* The relevance network sees sg(s): relevance is a read-out of how well each teacher view explains
  the student, and must not become a second path that pushes the student's latents around. It is
  trained by the same loss through the weights w (so it learns to weight the views whose
  projection matches the student best); below the floor a weight gets no gradient.
* The pruning EMA tracks the raw softmax weight w_k (not the floored one), so the floor keeps every
  active view learning without hiding which views the relevance network rates low.
* `distill_direction: student_to_teacher` replaces P(t_k, k) ~ s by Q(s, k) ~ t_k. Pulling s toward a
  regression of s from teacher features shrinks what the teacher cannot explain, i.e. the
  target-specific part of s; predicting the teacher from s only asks s to contain the teacher's
  information. The specified direction stays the default (measurements: docs/benchmarks.md).

Shape legend: docs/architecture.md (V active views).
"""
from __future__ import annotations

from typing import Sequence

import torch

from models.networks import MLP

from .base import MethodError, TeacherMethod
from .targets import TARGETS, student_predictions, teacher_predictions

DIRECTIONS = ("teacher_to_student", "student_to_teacher")


class Comet(TeacherMethod):
    name = "comet"
    encoder = "moe"  # pruning saves work only because a MoE teacher's experts are shared by all views
    prunes = True
    conditional_projection = True
    distill_targets = TARGETS
    shuffles = True

    def __init__(self, teacher, student_feat: int, config, behaviour=None, logger=None, verbose: bool = True):
        super().__init__(teacher, student_feat, config, behaviour, logger, verbose)
        c = config
        ft, fs = self.teacher_feat, self.student_feat
        self.conditional = bool(c["conditional_distill"]) and self.conditional_projection
        if self.shuffle and not self.conditional:
            raise MethodError(f"shuffle_views permutes the view labels of a conditioned projection; distill_mode "
                              f"'{self.name}' with conditional_distill {c['conditional_distill']} reads none")
        direction = c.get("distill_direction", "teacher_to_student")
        if direction not in DIRECTIONS:
            raise MethodError(f"distill_direction must be one of {DIRECTIONS}, got '{direction}'")
        self.to_teacher = direction == "student_to_teacher" and self.conditional_projection
        self.proj = self.make_projection(c)
        self.relevance = MLP(ft + fs, 1, c["relevance_hidden"], 1, c["act"], False)

    def make_projection(self, c):
        inp, out = (self.student_feat, self.teacher_feat) if self.to_teacher else (self.teacher_feat, self.student_feat)
        return MLP(inp, out, c["distill_hidden"], 1, c["act"], False, n_tasks=self.n_tasks if self.conditional else 0)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "conditional": self.conditional, "to_teacher": self.to_teacher}

    def project(self, x: torch.Tensor, tasks: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The projection under the view labels `tasks` (default: the active views' own): P(t_k, k)
        (V, B, T, Ft) -> (V, B, T, Fs); with `distill_direction: student_to_teacher`, Q(s, k) (V, B, T, Fs) ->
        (V, B, T, Ft)."""
        size = self.student_feat if self.to_teacher else self.teacher_feat
        assert x.shape[-1] == size, f"projection input {tuple(x.shape)}, expected last size {size}"
        if self.conditional:
            if tasks is None:
                ids = self._ids
            else:
                ids = tasks.to(x.device) if torch.is_tensor(tasks) else torch.as_tensor(list(tasks), device=x.device)
            assert ids.shape == x.shape[:1], f"one task id per view: {tuple(ids.shape)} vs {tuple(x.shape)}"
            return self.proj(x, ids)
        return self.proj(x)

    def weights(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Relevance w = softmax over the views of g([t_k, sg(s)]): (V, B, T)."""
        s = s.detach().unsqueeze(0).expand(t.shape[0], *s.shape)  # (V, B, T, Fs)
        alpha = self.relevance(torch.cat([t, s.to(t.dtype)], -1)).squeeze(-1)  # (V, B, T)
        return torch.softmax(alpha.float(), 0)

    def world_model_loss(self, data: dict, post: dict, wm, step: int) -> tuple[torch.Tensor, dict]:
        """The matching loss for one world-model update, already scaled by `distill_weight`; `step` only
        labels pruning events. Returns (scalar loss, flat dict of floats)."""
        s = wm.dynamics.get_feat(post).float()  # (B, T, Fs)
        assert s.shape[-1] == self.student_feat, f"student feature size {s.shape[-1]}, expected {self.student_feat}"
        keys = list(post)
        data, s, *states = self.subset(data, s, *post.values())
        post = dict(zip(keys, states))
        return self.run_update(lambda: self._target_loss(data, post, s, wm), s, step)

    def _target_loss(self, data: dict, post: dict, s: torch.Tensor, wm):
        """The pairs `distill_target` matches: teacher (V, B', T', Ft) and student (B', T', Fs) features with the
        positions that count (B', T') or None (all); (B', T') = (B, T) for posteriors, (M, k) for predictions."""
        if self.target == "posterior":
            return self._latent_loss(self.teacher_features(data), s, None)
        _, states = self.teacher_features(data, return_states=True)  # (V, B, T, ...)
        t = teacher_predictions(self.teacher, states, data, self.active_ids, self.horizon, self.sample)
        with wm.autocast():  # the student's own precision: its posterior holds bf16 parts under precision 16
            s, valid = student_predictions(wm.dynamics, post, data, self.horizon)  # (M, k, Fs), (M, k)
        return self._latent_loss(t, s, valid)

    def _latent_loss(self, t: torch.Tensor, s: torch.Tensor, mask: torch.Tensor | None):
        labels = self.view_labels()  # (V,)
        if self.to_teacher:
            pred, target, size = self.project(s.unsqueeze(0).expand(t.shape[0], *s.shape), labels), t, self.teacher_feat
        else:
            pred, target, size = self.project(t, labels), s.unsqueeze(0), self.student_feat  # (V, B, T, Fs)
        w = self.weights(t, s)  # (V, B, T)
        dist = (pred - target).pow(2).sum(-1) / size  # (V, B, T)
        keep = torch.ones_like(dist[0]) if mask is None else mask.to(dist.dtype)  # (B, T)
        count = keep.sum().clamp(min=1)
        per_view = (torch.clamp(w, min=self.floor) * dist * keep).sum((1, 2)) / count  # (V,)
        mean_w = (w.detach() * keep).sum((1, 2)) / count  # (V,)
        self.update_ema(mean_w)
        names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
        names += [f"distill/match_{self.task_names[i]}" for i in self.active_ids]
        stat_names, stats = self.relevance_stats(w, mask)
        values = list(mean_w) + list((dist.detach() * keep).sum((1, 2)) / count) + stats
        return per_view.sum(), names + stat_names, values
