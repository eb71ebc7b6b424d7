"""Per target x method: success curves on a shared step grid, final score and area under the curve."""
from __future__ import annotations

import dataclasses

import numpy as np

from analysis.load import Run
from tools import UsageError


@dataclasses.dataclass
class Table:
    """Scores of the complete runs, arranged for rliable: method -> (seeds, targets[, steps])."""
    methods: list[str]
    targets: list[str]
    steps: np.ndarray                       # (E,) shared evaluation steps
    seeds: dict[str, list[int]]             # method -> seeds used (present for every target)
    curves: dict[str, np.ndarray]           # method -> (S, T, E) success at any step
    curves_final: dict[str, np.ndarray]     # method -> (S, T, E) success at the last step
    returns: dict[str, np.ndarray]          # method -> (S, T, E) eval return
    last: int                               # evaluations averaged into the final score

    def final(self, method: str, which: str = "success") -> np.ndarray:
        """(S, T) mean of the last `last` evaluations."""
        source = {"success": self.curves, "success_final": self.curves_final, "return": self.returns}[which]
        return source[method][..., -self.last:].mean(-1)

    def auc(self, method: str) -> np.ndarray:
        """(S, T) area under the success curve over the evaluated range, as a mean success in [0, 1]."""
        y, x = self.curves[method], self.steps.astype(float)
        if len(x) < 2:
            return y[..., 0]
        return np.trapezoid(y, x, axis=-1) / (x[-1] - x[0])


def build(runs: list[Run], last: int) -> tuple[Table, list[str]]:
    """Arrange complete runs; returns the table and one note per run or seed left out (and why)."""
    notes = []
    complete = []
    for run in runs:
        if run.complete:
            complete.append(run)
        else:
            reached = int(run.steps[-1]) if len(run.steps) else 0
            notes.append(f"{run.path}: left out, evaluated up to env step {reached} of {run.total_steps}")
    if not complete:
        raise UsageError("no complete student run (one whose last evaluation reached its `steps`) was found")
    steps = sorted(set.intersection(*(set(r.steps.tolist()) for r in complete)))
    if not steps:
        raise UsageError("the runs share no evaluation step; use the same eval_every and steps for all of them")
    steps = np.array(steps)
    methods = sorted({r.method for r in complete})
    targets = sorted({r.target for r in complete})
    by_key: dict[tuple, Run] = {}
    for run in complete:
        key = (run.method, run.target, run.seed)
        if key in by_key:
            raise UsageError(f"two runs of {key[0]} on {key[1]} with seed {key[2]}: {by_key[key].path} and {run.path}; "
                             "pass only one of them")
        by_key[key] = run
    seeds, curves, finals, returns = {}, {}, {}, {}
    for method in methods:
        per_target = [{s for (m, t, s) in by_key if m == method and t == target} for target in targets]
        common = sorted(set.intersection(*per_target))
        dropped = sorted(set.union(*per_target) - set(common))
        if dropped:
            notes.append(f"{method}: seeds {dropped} left out (not complete for every target)")
        if not common:
            notes.append(f"{method}: left out, no seed is complete for every target")
            continue
        seeds[method] = common

        def grid(name: str) -> np.ndarray:
            out = np.zeros((len(common), len(targets), len(steps)))
            for i, seed in enumerate(common):
                for j, target in enumerate(targets):
                    run = by_key[(method, target, seed)]
                    out[i, j] = run.curves[name][np.searchsorted(run.steps, steps)]
            return out

        curves[method], finals[method], returns[method] = grid("success"), grid("success_final"), grid("return")
    kept = [m for m in methods if m in seeds]
    return Table(kept, targets, steps, seeds, curves, finals, returns, min(last, len(steps))), notes
