"""Paired analysis (analysis/paired.py, results.py) on fixtures with known answers, and results.py's one-line
errors for run folders that lack a setting."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from analysis import paired

SEEDS = 8


# --- the statistics ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.30, "better"), (0.001, 0.04, "better"), (-0.30, -0.01, "worse"),
    (-0.04, 0.049, "not better by more than 0.05"), (-0.049, 0.0, "not better by more than 0.05"),
    (-0.06, 0.04, "inconclusive"), (-0.01, 0.05, "inconclusive"), (0.0, 0.2, "inconclusive"),
    (-0.05, 0.05, "inconclusive"), (float("nan"), float("nan"), "too few pairs")])
def test_verdict_follows_the_conclusion_rule(low, high, expected):
    assert paired.verdict(low, high, 0.05) == expected


def test_p_values_match_closed_forms():
    # Wilcoxon, exact: 5 positive differences of distinct size -> only the all-positive and all-negative sign
    # patterns are as extreme: p = 2 / 2^5.
    wilcoxon, _ = paired.p_values(np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert wilcoxon == pytest.approx(2 / 32)
    # paired t on (1, 2, 3): t = 2 / (1 / sqrt 3) with 2 degrees of freedom, whose two-sided p is
    # 1 - t / sqrt(2 + t^2).
    t = 2 * math.sqrt(3)
    assert paired.p_values(np.array([1.0, 2.0, 3.0]))[1] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert paired.p_values(np.zeros(6)) == (1.0, 1.0)
    assert paired.p_values(np.full(6, 0.1))[1] == 0.0  # a constant non-zero difference has no spread


def test_bootstrap_interval_matches_the_normal_interval_at_large_n():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.1, 0.2, 400)
    low, high = paired.bootstrap_ci(diffs, np.random.default_rng(0), 4000)
    half = 1.96 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert low == pytest.approx(diffs.mean() - half, abs=0.004) and high == pytest.approx(diffs.mean() + half, abs=0.004)
    t_low, t_high = paired.t_ci(diffs)
    assert t_low == pytest.approx(diffs.mean() - half, abs=0.001) and t_high == pytest.approx(diffs.mean() + half,
                                                                                               abs=0.001)


def test_one_comparison_known_answer():
    base = np.linspace(0.1, 0.8, SEEDS)
    row = paired.one(base + 0.2, base, 0.05, np.random.default_rng(0), 500)
    assert row["pairs"] == SEEDS and row["mean"] == pytest.approx(0.2)
    assert row["ci"] == pytest.approx((0.2, 0.2)) and row["verdict"] == "better"
    assert row["wilcoxon_p"] == pytest.approx(2 / 2 ** SEEDS) and row["t_p"] == 0.0
    same = paired.one(base, base, 0.05, np.random.default_rng(0), 500)
    assert same["mean"] == 0.0 and same["ci"] == (0.0, 0.0) and same["verdict"] == "not better by more than 0.05"
    assert paired.one(base[:1], base[:1], 0.05, np.random.default_rng(0), 500)["verdict"] == "too few pairs"


# --- through results.py ------------------------------------------------------------------------------------

# Per-seed offsets from the baseline's curve, added at every evaluation so that the AUC and the final score
# move by exactly the offset: comet +0.2 (better), random ±0.01 (equivalent at 0.05), noisy ±0.3 (inconclusive).
OFFSETS = {"dreamer": [0.0] * SEEDS, "comet": [0.2] * SEEDS, "random": [0.01, -0.01] * (SEEDS // 2),
           "noisy": [0.3, -0.3] * (SEEDS // 2)}
BASE = [0.0, 0.1, 0.2, 0.3]  # the baseline's eval success at steps 100..400 (seed s adds 0.05 s)


def write_run(run: pathlib.Path, config: dict, curve: list[float]) -> None:
    from ruamel.yaml import YAML

    run.mkdir(parents=True)
    with open(run / "config.yaml", "w") as f:
        YAML().dump(config, f)
    rows = [{"step": 100 * (i + 1), "eval/success_any": v, "eval/success_final": v, "eval/return": 10 * v,
             "eval/episodes": 20} for i, v in enumerate(curve)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def paired_runs(root: pathlib.Path, drop: tuple[str, ...] = ()) -> None:
    for method, offsets in OFFSETS.items():
        for seed, offset in enumerate(offsets):
            config = {"task": "metaworld_handle_press", "seed": seed, "eval_episodes": 20, "steps": 400,
                      "eval_goals": "fixed", "eval_goal_seed": 0}
            for key in drop:
                config.pop(key)
            write_run(root / "handle_press" / method / f"seed{seed}", config,
                      [v + 0.05 * seed + offset for v in BASE])


def report(tmp_path: pathlib.Path, runs: pathlib.Path, out: str, *flags: str) -> dict:
    import results

    assert results.main([str(runs), "--out", str(tmp_path / out), "--last", "1", "--reps", "400", *flags]) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


@pytest.mark.slow
def test_results_paired_verdicts_known_answers_and_byte_identical(tmp_path):
    paired_runs(tmp_path / "runs")
    data = report(tmp_path, tmp_path / "runs", "a")
    report(tmp_path, tmp_path / "runs", "b")
    for name in ("results.md", "results.json", "results.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    rows = {(r["arm"], r["metric"]): r for r in data["paired"]}
    assert {r["baseline"] for r in data["paired"]} == {"dreamer"} and len(rows) == 6
    expected = {"comet": "better", "random": "not better by more than 0.05", "noisy": "inconclusive"}
    for (arm, metric), row in rows.items():
        assert row["pairs"] == SEEDS and row["seeds"] == list(range(SEEDS))
        np.testing.assert_allclose(row["per_seed"], OFFSETS[arm], atol=1e-12)
        assert row["mean"] == pytest.approx(np.mean(OFFSETS[arm]), abs=1e-12)
        assert row["verdict"] == expected[arm], (arm, metric, row)
    assert rows[("noisy", "auc")]["t_p"] == pytest.approx(1.0) and rows[("comet", "auc")]["t_p"] == 0.0
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| handle_press | comet − dreamer | normalised AUC of success | 8 | +0.200 | [+0.200, +0.200]" in md, md
    proto = data["protocol"]
    assert proto["eval_episodes"] == [20] and "fixed goal set 0" in proto["eval_goals"][0]
    assert "margin 0.05" in proto["paired"]
    # a wider margin turns the noisy arm's ±0.3 into an equivalence only when its CI fits inside
    wide = report(tmp_path, tmp_path / "runs", "c", "--equivalence", "0.5")
    assert {r["verdict"] for r in wide["paired"] if r["arm"] == "noisy"} == {"not better by more than 0.5"}


def test_paired_uses_only_the_seeds_both_arms_ran(tmp_path):
    paired_runs(tmp_path / "runs")
    for seed in (0, 1):  # comet ran seeds 2..7 only
        for path in sorted((tmp_path / "runs/handle_press/comet" / f"seed{seed}").iterdir()):
            path.unlink()
        (tmp_path / "runs/handle_press/comet" / f"seed{seed}").rmdir()
    rows = report(tmp_path, tmp_path / "runs", "out")["paired"]
    comet = [r for r in rows if r["arm"] == "comet"]
    assert {r["pairs"] for r in comet} == {SEEDS - 2} and comet[0]["seeds"] == list(range(2, SEEDS))


def test_a_missing_setting_is_taken_from_the_metrics_or_is_one_line(tmp_path, capsys):
    import results

    paired_runs(tmp_path / "old", drop=("eval_episodes", "eval_goals", "eval_goal_seed"))
    proto = report(tmp_path, tmp_path / "old", "out")["protocol"]
    assert proto["eval_episodes"] == [20]  # from metrics.jsonl's eval/episodes
    assert proto["eval_goals"] == ["drawn by each run's own evaluation envs (the config predates eval_goals)"]

    paired_runs(tmp_path / "bad", drop=("steps",))
    capsys.readouterr()
    assert results.main([str(tmp_path / "bad"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "handle_press/comet/seed0: config.yaml has no 'steps'" in err, err
    assert "Traceback" not in err
