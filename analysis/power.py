"""Power of a paired study: CI half-width and verdict probabilities of the paired analysis for n pairs.

  python -m analysis.power --out docs/results/handle_press_near/power.json

Model: per-seed scores of the two arms are normal with the same std σ and correlation ρ between the arms of one
seed (the same seed gives both arms the same prefill data and training envs), so the per-seed difference has
std σ_d = σ·sqrt(2(1 − ρ)). The half-width column is the Student-t one, t(0.975, n − 1)·σ_d/√n. The verdict
columns simulate whole studies: n pairs drawn from the model with true difference Δ, analysed exactly as
results.py does (analysis/paired.py: percentile bootstrap, the conclusion rule at margin δ), and count how
often each verdict comes out; the two-stage rows add 16 pairs to 16 only when the first verdict is inconclusive. Success rates are bounded and discrete; the normal model ignores that, which
matters most when a score sits near 0 or 1.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

from analysis import paired

SIGMAS = (0.12, 0.17)                     # per-seed std of the score (measured range)
RHOS = (0.0, 0.5, 0.7, 0.8)               # correlation of the two arms of one seed
PAIRS = (8, 12, 16, 24, 32, 48, 64)
DELTAS = (0.0, 0.05, 0.1, 0.15)           # true mean difference arm − baseline
SIM_RHO = 0.7
STAGES = (16, 16)                         # two-stage design: 16 pairs, 16 more only if the first verdict is inconclusive


def paired_sd(sigma: float, rho: float) -> float:
    return sigma * math.sqrt(2 * (1 - rho))


def half_width(n: int, sigma: float, rho: float, size: float = paired.CI) -> float:
    from scipy import stats

    return float(stats.t.ppf((1 + size) / 2, n - 1)) * paired_sd(sigma, rho) / math.sqrt(n)


def simulate(n: int, sigma: float, rho: float, delta: float, margin: float, sims: int, reps: int,
             seed: int) -> dict[str, float]:
    """Fraction of `sims` simulated studies of n pairs that end in each verdict."""
    rng = np.random.default_rng([seed, n, int(round(sigma * 1000)), int(round(rho * 1000)),
                                 int(round(delta * 1000))])
    diffs = rng.normal(delta, paired_sd(sigma, rho), size=(sims, n))  # (sims, n)
    counts: dict[str, int] = {}
    for row in diffs:
        low, high = paired.bootstrap_ci(row, rng, reps)
        label = paired.verdict(low, high, margin)
        counts[label] = counts.get(label, 0) + 1
    return {label: counts.get(label, 0) / sims for label in
            ("better", "worse", paired.equivalence_label(margin), "inconclusive")}


def two_stage(first: int, second: int, sigma: float, rho: float, delta: float, margin: float, sims: int,
              reps: int, seed: int) -> dict[str, float]:
    """Verdict fractions of a study that analyses `first` pairs and, only when that verdict is inconclusive, adds
    `second` pairs and analyses all of them (two looks, each at the unadjusted 95%)."""
    rng = np.random.default_rng([seed, first, second, int(round(sigma * 1000)), int(round(delta * 1000)), 2])
    diffs = rng.normal(delta, paired_sd(sigma, rho), size=(sims, first + second))  # (sims, first + second)
    counts: dict[str, int] = {}
    for row in diffs:
        label = paired.verdict(*paired.bootstrap_ci(row[:first], rng, reps), margin)
        if label == "inconclusive":
            label = paired.verdict(*paired.bootstrap_ci(row, rng, reps), margin)
        counts[label] = counts.get(label, 0) + 1
    return {label: counts.get(label, 0) / sims for label in
            ("better", "worse", paired.equivalence_label(margin), "inconclusive")}


def analysis(margin: float, sims: int, reps: int, seed: int) -> dict:
    widths = [{"sigma": s, "rho": r, "sigma_d": round(paired_sd(s, r), 4),
               "half_width": {str(n): round(half_width(n, s, r), 4) for n in PAIRS}} for s in SIGMAS for r in RHOS]
    verdicts = [{"sigma": s, "rho": SIM_RHO, "pairs": n, "delta": d,
                 "verdicts": simulate(n, s, SIM_RHO, d, margin, sims, reps, seed)}
                for s in SIGMAS for n in PAIRS for d in DELTAS]
    staged = [{"sigma": s, "rho": SIM_RHO, "pairs": f"{STAGES[0]}+{STAGES[1]}", "delta": d,
               "verdicts": two_stage(*STAGES, s, SIM_RHO, d, margin, sims, reps, seed)} for s in SIGMAS for d in DELTAS]
    return {"model": __doc__.split("Model: ")[1].strip(), "margin": margin, "sims": sims, "bootstrap_reps": reps,
            "seed": seed, "half_widths": widths, "verdicts": verdicts, "two_stage": staged}


def markdown(result: dict) -> str:
    lines = ["| σ | ρ | σ_d | " + " | ".join(f"n={n}" for n in PAIRS) + " |", "|---" * (len(PAIRS) + 3) + "|"]
    for w in result["half_widths"]:
        lines.append(f"| {w['sigma']} | {w['rho']} | {w['sigma_d']:.3f} | "
                     + " | ".join(f"±{w['half_width'][str(n)]:.3f}" for n in PAIRS) + " |")
    equivalent = paired.equivalence_label(result["margin"])
    lines += ["", f"| σ | n | Δ | better | worse | {equivalent} | inconclusive |", "|---|---|---|---|---|---|---|"]
    for v in result["verdicts"] + result["two_stage"]:
        p = v["verdicts"]
        lines.append(f"| {v['sigma']} | {v['pairs']} | {v['delta']} | {p['better']:.3f} | {p['worse']:.3f} | "
                     f"{p[equivalent]:.3f} | {p['inconclusive']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the tables (printed as markdown either way)")
    parser.add_argument("--equivalence", type=float, default=0.05, help="margin δ of the verdict")
    parser.add_argument("--sims", type=int, default=2000, help="simulated studies per cell")
    parser.add_argument("--reps", type=int, default=1000, help="bootstrap replications per simulated study")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = analysis(args.equivalence, args.sims, args.reps, args.seed)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
