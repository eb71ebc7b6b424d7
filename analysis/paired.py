"""Paired comparison of two arms that ran the same seeds: per-seed differences of the normalised AUC of success
and of the final score, their bootstrap 95% CI, Wilcoxon and paired t p-values, and a verdict against an
equivalence margin δ.

The verdict (docs/evaluation.md, "Paired analysis") reads the CI of the mean difference arm − baseline:
  better                          the CI lies above 0 (low > 0)
  worse                           the CI lies below 0 (high < 0)
  not better by more than δ       the CI contains 0 and lies inside (−δ, δ)
  inconclusive                    anything else (the CI contains 0 and reaches ±δ or beyond)
Boundaries are strict: a CI ending exactly at 0 or at ±δ does not qualify.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from analysis.aggregate import Table

CI = 0.95
METRICS = {"auc": "normalised AUC of success", "final": "final score"}
# Differences are rounded to this many decimals (far below one episode's share of a success rate), so that
# floating-point noise in an AUC makes neither spread nor broken ties: 0.7 − 0.5 and 0.3 − 0.1 are one value.
DECIMALS = 10
MIN_PAIRS = 2


def equivalence_label(margin: float) -> str:
    return f"not better by more than {margin:g}"


def verdict(low: float, high: float, margin: float) -> str:
    """The conclusion rule above, for a CI [low, high] of a mean difference and a margin δ > 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "too few pairs"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -margin < low and high < margin:
        return equivalence_label(margin)
    return "inconclusive"


def bootstrap_ci(diffs: np.ndarray, rng: np.random.Generator, reps: int, size: float = CI) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `diffs` (resampling seeds with replacement)."""
    n = len(diffs)
    means = diffs[rng.integers(0, n, size=(reps, n))].mean(1)  # (reps,)
    low, high = np.quantile(means, [(1 - size) / 2, (1 + size) / 2])
    return float(low), float(high)


def t_ci(diffs: np.ndarray, size: float = CI) -> tuple[float, float]:
    """Student-t interval of the mean of `diffs` (shown beside the bootstrap: it is wider at small n)."""
    from scipy import stats

    n, mean = len(diffs), float(diffs.mean())
    half = float(stats.t.ppf((1 + size) / 2, n - 1)) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def p_values(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided (Wilcoxon signed-rank, paired t) p-values of the differences against 0.

    Differences that are all 0 give 1.0 for both; a constant non-zero difference gives a paired t p of 0.0
    (its standard error is 0); zero differences are dropped from the Wilcoxon test (its usual convention)."""
    from scipy import stats

    if not np.any(diffs):
        return 1.0, 1.0
    wilcoxon = float(stats.wilcoxon(diffs, zero_method="wilcox").pvalue)
    if diffs.max() == diffs.min():  # (a std computed from a mean of equal floats need not be exactly 0)
        return wilcoxon, 0.0
    return wilcoxon, float(stats.ttest_1samp(diffs, 0.0).pvalue)


def _rng(seed: int, key: str) -> np.random.Generator:
    # One stream per comparison, named by its key: adding an arm leaves every other comparison's interval alone.
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def one(arm: np.ndarray, base: np.ndarray, margin: float, rng: np.random.Generator, reps: int) -> dict:
    """The paired statistics of per-seed scores `arm` and `base` (same seeds, same order)."""
    diffs = np.round(np.asarray(arm, float) - np.asarray(base, float), DECIMALS) + 0.0  # + 0.0: no -0.0
    out = {"pairs": len(diffs), "mean": float(diffs.mean()) if len(diffs) else float("nan"),
           "per_seed": [float(d) for d in diffs]}
    if len(diffs) < MIN_PAIRS:
        nan = float("nan")
        return {**out, "ci": (nan, nan), "ci_t": (nan, nan), "wilcoxon_p": nan, "t_p": nan,
                "verdict": "too few pairs"}
    low, high = bootstrap_ci(diffs, rng, reps)
    wilcoxon, t_p = p_values(diffs)
    return {**out, "ci": (low, high), "ci_t": t_ci(diffs), "wilcoxon_p": wilcoxon, "t_p": t_p,
            "verdict": verdict(low, high, margin)}


def comparisons(table: Table, baseline: str | None) -> list[tuple[str, str]]:
    """(arm, baseline) pairs: every other arm against `baseline` when the table has it, else every pair of arms
    in name order (the later against the earlier)."""
    methods = table.methods
    if baseline in methods:
        return [(m, baseline) for m in methods if m != baseline]
    return [(methods[j], methods[i]) for i in range(len(methods)) for j in range(i + 1, len(methods))]


def analyse(table: Table, baseline: str | None, margin: float, seed: int, reps: int) -> list[dict]:
    """One row per target x comparison x metric over the seeds both arms ran."""
    rows = []
    for arm, base in comparisons(table, baseline):
        shared = sorted(set(table.seeds[arm]) & set(table.seeds[base]))
        ia = [table.seeds[arm].index(s) for s in shared]
        ib = [table.seeds[base].index(s) for s in shared]
        scores = {"auc": (table.auc(arm), table.auc(base)), "final": (table.final(arm), table.final(base))}
        for j, target in enumerate(table.targets):
            for metric, (a, b) in scores.items():
                key = f"{target}/{arm}/{base}/{metric}"
                rows.append({"target": target, "arm": arm, "baseline": base, "metric": metric, "seeds": shared,
                             **one(a[ia, j], b[ib, j], margin, _rng(seed, key), reps)})
    return rows
