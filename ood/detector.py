"""The OOD detector: one shrinkage Gaussian per source task in that task's own teacher view,
distances of any episode to every task, the `min` and `mixture` scores and calibrated thresholds.

Legend: M episodes, K source tasks (= task views, in the same order), F feature size.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from . import stats

SCORES = ("min", "mixture")


@dataclasses.dataclass
class Detector:
    """Per-task Gaussians (task k fitted on its own episodes embedded under view k) and, once
    calibrated, one threshold per score."""

    gaussians: list[stats.Gaussian]
    weights: np.ndarray                      # (K,) mixture weights pi_k
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def fit(cls, per_task: Sequence[np.ndarray], shrinkage: str = "ledoit_wolf") -> "Detector":
        """Fit from `per_task[k]` = embeddings (M_k, K, F) of task k's fit episodes; only view k is
        used for task k. Mixture weights are uniform so a task with more episodes does not pull the
        score towards itself."""
        k = len(per_task)
        assert k >= 1, "need at least one source task"
        gaussians = []
        for task, emb in enumerate(per_task):
            emb = np.asarray(emb)
            assert emb.ndim == 3 and emb.shape[1] == k, (
                f"task {task}: expected embeddings (M, {k}, F), got shape {emb.shape}")
            gaussians.append(stats.fit_gaussian(emb[:, task], shrinkage))
        return cls(gaussians=gaussians, weights=np.full(k, 1.0 / k))

    @property
    def num_tasks(self) -> int:
        return len(self.gaussians)

    def distances(self, emb: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances (M, K): column k compares the view-k embedding with task k."""
        emb = np.asarray(emb)
        assert emb.ndim == 3 and emb.shape[1] == self.num_tasks, (
            f"expected embeddings (M, {self.num_tasks}, F), got shape {emb.shape}")
        if len(emb) == 0:
            return np.zeros((0, self.num_tasks))
        return np.stack([stats.mahalanobis_sq(emb[:, k], g) for k, g in enumerate(self.gaussians)], axis=1)

    def score(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """`min` (M,), `mixture` (M,), `closest` task (M,) and the distances `d` (M, K)."""
        d = self.distances(emb)
        if len(d) == 0:
            empty = np.zeros(0)
            return {"min": empty, "mixture": empty, "closest": np.zeros(0, dtype=int), "d": d}
        smin, closest = stats.min_score(d)
        return {"min": smin, "mixture": stats.mixture_score(d, self.weights), "closest": closest, "d": d}

    def calibrate(self, calib_scores: dict[str, np.ndarray], quantile: float) -> dict[str, float]:
        """Set each score's threshold to the `quantile` of the calibration episodes' scores."""
        self.thresholds = {name: stats.threshold(calib_scores[name], quantile) for name in SCORES}
        return self.thresholds

    def flags(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """OOD flag (M,) per score: score strictly above its calibrated threshold."""
        assert self.thresholds, "calibrate() before flagging"
        return {name: np.asarray(scores[name]) > self.thresholds[name] for name in SCORES}
