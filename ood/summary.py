"""Aggregates that go into the OOD report: rates, closest-task histograms, detection metrics,
closest-task accuracy and per-training-phase bins. Pure numpy; JSON-ready builtins out.

Legend: M episodes, K source tasks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import stats
from .detector import SCORES

TARGET_TPR = 0.95


def closest_histogram(closest: np.ndarray, tasks: Sequence[str]) -> dict[str, int]:
    """Episodes per closest source task, every task listed (zero counts included)."""
    counts = np.bincount(np.asarray(closest, dtype=int), minlength=len(tasks))
    assert len(counts) == len(tasks), f"closest-task index out of range for {len(tasks)} tasks"
    return {task: int(c) for task, c in zip(tasks, counts)}


def rate(flags: np.ndarray) -> float | None:
    """Fraction of true flags (None when there are no episodes)."""
    flags = np.asarray(flags, dtype=bool)
    return float(flags.mean()) if flags.size else None


def mean(values: np.ndarray) -> float | None:
    """Mean (None when empty)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else None


def detection(negatives: dict[str, np.ndarray], positives: dict[str, np.ndarray]) -> dict:
    """AUROC and FPR at 95% TPR per score; in-distribution episodes are the negatives, the
    student's the positives, a higher score means more out of distribution."""
    out = {}
    for name in SCORES:
        neg, pos = np.asarray(negatives[name]), np.asarray(positives[name])
        if neg.size == 0 or pos.size == 0:
            out[name] = {"auroc": None, "fpr_at_95tpr": None}
            continue
        out[name] = {"auroc": stats.auroc(neg, pos), "fpr_at_95tpr": stats.fpr_at_tpr(neg, pos, TARGET_TPR)}
    return out


def closest_accuracy(closest: np.ndarray, labels: np.ndarray, tasks: Sequence[str]) -> dict:
    """Closest-task accuracy of labelled in-distribution episodes, overall and per true task."""
    closest, labels = np.asarray(closest, dtype=int), np.asarray(labels, dtype=int)
    assert closest.shape == labels.shape, f"{closest.shape} predictions vs {labels.shape} labels"
    per_task = {}
    for k, task in enumerate(tasks):
        sel = labels == k
        per_task[task] = float(np.mean(closest[sel] == k)) if sel.any() else None
    overall = float(np.mean(closest == labels)) if labels.size else None
    return {"overall": overall, "per_task": per_task}


def id_summary(scores: dict, flags: dict, labels: np.ndarray, tasks: Sequence[str], flag_score: str) -> dict:
    """Flag rates and closest-task accuracy of a labelled in-distribution set."""
    labels = np.asarray(labels, dtype=int)
    return {
        "n": int(len(labels)),
        "flag_rate": rate(flags[flag_score]),
        "flag_rate_per_task": {task: rate(flags[flag_score][labels == k]) for k, task in enumerate(tasks)},
        "flag_rate_by_score": {name: rate(flags[name]) for name in SCORES},
        "mean_score": {name: mean(scores[name]) for name in SCORES},
        "closest_task_accuracy": closest_accuracy(scores["closest"], labels, tasks),
    }


def bin_index(n: int, n_bins: int) -> np.ndarray:
    """Training-phase bin (M,) of each of `n` episodes in run order: `n_bins` contiguous, nearly
    equal bins (-1 everywhere when binning is off)."""
    if n_bins <= 0:
        return np.full(n, -1, dtype=int)
    out = np.empty(n, dtype=int)
    for b, idx in enumerate(np.array_split(np.arange(n), n_bins)):
        out[idx] = b
    return out


def bins_summary(bins: np.ndarray, n_bins: int, scores: dict, flags: dict, success: np.ndarray,
                 tasks: Sequence[str], flag_score: str) -> list[dict]:
    """Per training-phase bin (of `bin_index`): episode range, OOD rate, mean scores, closest-task
    histogram and success rate. Bins left empty (fewer episodes than bins) are listed with n = 0."""
    out = []
    for b in range(max(int(n_bins), 0)):
        sel = np.flatnonzero(bins == b)
        out.append({
            "bin": b,
            "episodes": [int(sel[0]), int(sel[-1])] if sel.size else None,
            "n": int(sel.size),
            "ood_rate": rate(flags[flag_score][sel]),
            "ood_rate_by_score": {name: rate(flags[name][sel]) for name in SCORES},
            "mean_score": {name: mean(scores[name][sel]) for name in SCORES},
            "closest_task_histogram": closest_histogram(scores["closest"][sel], tasks),
            "success_rate": rate(success[sel]),
        })
    return out
