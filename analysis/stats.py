"""Aggregates across targets with rliable: IQM and mean with stratified-bootstrap 95% CIs, probability of
improvement, IQM sample-efficiency curves and performance profiles.

rliable draws its bootstrap samples from numpy's global generator whatever `random_state` says, so every
call below seeds it first: the same inputs give the same intervals.
"""
from __future__ import annotations

import numpy as np

from analysis.aggregate import Table

REPS = 2000
CI = 0.95


def _seeded(seed: int) -> None:
    np.random.seed(seed)


def aggregates(table: Table, seed: int, reps: int = REPS) -> dict:
    """method -> {iqm, mean: (point, low, high)} of the final success across targets."""
    from rliable import library as rly, metrics

    scores = {m: table.final(m) for m in table.methods}
    _seeded(seed)
    point, interval = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]), reps=reps,
        confidence_interval_size=CI)
    return {m: {"iqm": (float(point[m][0]), float(interval[m][0, 0]), float(interval[m][1, 0])),
                "mean": (float(point[m][1]), float(interval[m][0, 1]), float(interval[m][1, 1]))}
            for m in table.methods}


def improvement(table: Table, seed: int, reps: int = REPS) -> dict:
    """(x, y) -> P(x > y) with its CI, for every ordered pair of methods."""
    from rliable import library as rly, metrics

    pairs = {f"{x},{y}": (table.final(x), table.final(y)) for x in table.methods for y in table.methods if x != y}
    if not pairs:
        return {}
    _seeded(seed)
    point, interval = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps,
                                                 confidence_interval_size=CI)
    return {tuple(k.split(",")): (float(np.ravel(point[k])[0]), *map(float, np.ravel(interval[k]))) for k in pairs}


def iqm_curves(table: Table, seed: int, reps: int = REPS) -> dict:
    """method -> (point (E,), low (E,), high (E,)) IQM of success at each evaluation step."""
    from rliable import library as rly, metrics

    def per_step(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x[..., e]) for e in range(x.shape[-1])])

    _seeded(seed)
    point, interval = rly.get_interval_estimates(table.curves, per_step, reps=reps, confidence_interval_size=CI)
    return {m: (point[m], interval[m][0], interval[m][1]) for m in table.methods}


def profiles(table: Table, seed: int, reps: int = REPS) -> tuple[np.ndarray, dict]:
    """Performance profiles: tau grid and method -> (fraction of runs with score > tau, low, high)."""
    from rliable import library as rly

    taus = np.linspace(0.0, 1.0, 21)
    _seeded(seed)
    point, interval = rly.create_performance_profile({m: table.final(m) for m in table.methods}, taus, reps=reps,
                                                     confidence_interval_size=CI)
    return taus, {m: (point[m], interval[m][0], interval[m][1]) for m in table.methods}
