"""`comet`: the student's latent matched to task-conditioned projections of the teacher's task views,
weighted by learned relevance, with progressive pruning of the least relevant source tasks.

L = sum_{k active} mean_{b,t}(max(floor, w_k) * |P(t_k, k) - s|^2) / Fs, w = softmax over the active
views of g([t_k, sg(s)]); the lowest-EMA view is pruned every `prune_every` updates down to
`min_active_tasks`. With `distill_direction: student_to_teacher` the matched pair is (Q(s, k), t_k),
normalised by Ft.

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

DIRECTIONS = ("teacher_to_student", "student_to_teacher")


class Comet(TeacherMethod):
    name = "comet"
    encoder = "moe"  # pruning saves work only because a MoE teacher's experts are shared by all views
    prunes = True
    conditional_projection = True

    def __init__(self, teacher, student_feat: int, config, behaviour=None, logger=None, verbose: bool = True):
        super().__init__(teacher, student_feat, config, behaviour, logger, verbose)
        c = config
        ft, fs = self.teacher_feat, self.student_feat
        self.conditional = bool(c["conditional_distill"]) and self.conditional_projection
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

    def world_model_loss(self, data: dict, post: dict, wm, step: int) -> tuple[torch.Tensor, dict]:
        """The matching loss for one world-model update, already scaled by `distill_weight`; `step` only
        labels pruning events. Returns (scalar loss, flat dict of floats)."""
        s = wm.dynamics.get_feat(post).float()  # (B, T, Fs)
        assert s.shape[-1] == self.student_feat, f"student feature size {s.shape[-1]}, expected {self.student_feat}"
        data, s = self.subset(data, s)
        return self.run_update(lambda: self._latent_loss(data, s), s, step)

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
        self.update_ema(mean_w)
        names = [f"distill/weight_{self.task_names[i]}" for i in self.active_ids]
        names += [f"distill/match_{self.task_names[i]}" for i in self.active_ids]
        return per_view.sum(), names, list(mean_w) + list(dist.detach().mean((1, 2)))
