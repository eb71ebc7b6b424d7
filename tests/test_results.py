"""results.py on known synthetic scores: the numbers, reproducibility, a report killed at any moment (the folder
holds the previous report or the new one, whole), and a run with a torn metrics line left out with --skip_bad."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = ("results.md", "results.json", "results.csv", "curves.png", "iqm_curves.png", "profiles.png")

FINAL = {  # method -> target -> per-seed final success (the last evaluation)
    "comet": {"drawer_close": [0.0, 0.5, 1.0, 1.0], "handle_press": [0.2, 0.4, 0.6, 0.9]},
    "dreamer": {"drawer_close": [0.0, 0.1, 0.2, 0.3], "handle_press": [0.0, 0.0, 0.5, 0.1]},
}

def synthetic_runs(root: pathlib.Path) -> None:
    from ruamel.yaml import YAML

    for method, targets in FINAL.items():
        for target, finals in targets.items():
            for seed, final in enumerate(finals):
                run = root / target / method / f"seed{seed}"
                run.mkdir(parents=True)
                with open(run / "config.yaml", "w") as f:
                    YAML().dump({"task": f"metaworld_{target}", "seed": seed, "eval_episodes": 20, "steps": 300,
                                 "use_distill": method != "dreamer", "distill_mode": "comet"}, f)
                rows = [{"step": 100, "eval/success_any": 0.0, "eval/success_final": 0.0, "eval/return": 1.0},
                        {"step": 150, "train/loss": 3.0},
                        {"step": 200, "eval/success_any": final / 2, "eval/success_final": 0.0, "eval/return": 2.0},
                        {"step": 300, "eval/success_any": final, "eval/success_final": final, "eval/return": 3.0}]
                (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

def test_results_known_values_and_reproducible(tmp_path):
    import results

    synthetic_runs(tmp_path / "runs")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert results.main([str(tmp_path / "runs"), "--out", str(out), "--last", "1", "--reps", "500"]) == 0
    for name in ("results.md", "results.json", "results.csv", "curves.png", "iqm_curves.png", "profiles.png"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    data = json.loads((outs[0] / "results.json").read_text())
    for method, targets in FINAL.items():
        scores = np.sort(np.concatenate(list(targets.values())))  # 8 scores: IQM is the mean of the middle 4
        iqm, low_iqm, high_iqm = data["aggregate"][method]["iqm"]
        mean, low_mean, high_mean = data["aggregate"][method]["mean"]
        assert iqm == pytest.approx(scores[2:6].mean()) and mean == pytest.approx(scores.mean()), method
        assert low_iqm <= iqm <= high_iqm and low_mean <= mean <= high_mean and low_mean < high_mean, method
        for row in (r for r in data["per_target"] if r["method"] == method):
            assert row["final_success"] == pytest.approx(np.mean(targets[row["target"]]))
            # Trapezoid over steps 100..300 of (0, f/2, f), divided by the range 200: f/2.
            assert row["auc"] == pytest.approx(np.mean(targets[row["target"]]) / 2)
    assert data["protocol"]["eval_episodes"] == [20] and data["protocol"]["eval_steps"] == [100, 200, 300]
    assert 0.5 < data["probability_of_improvement"]["comet > dreamer"][0] <= 1.0



def report(runs: pathlib.Path, out: pathlib.Path, *flags: str, fault: str | None = None) -> subprocess.Popen:
    """results.py as a process of its own; `fault` kills it (SIGKILL) inside an atomic write (tools.FAULT_ENV)."""
    env = {k: v for k, v in os.environ.items() if k != "COMET_KILL_IN_WRITE"}
    if fault:
        env["COMET_KILL_IN_WRITE"] = fault
    return subprocess.Popen([sys.executable, "results.py", str(runs), "--out", str(out), "--reps", "200", *flags],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def contents(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_report_killed_at_any_moment_leaves_one_whole_report(tmp_path):
    synthetic_runs(tmp_path / "runs")
    sets = {}
    for last in ("1", "2"):  # the two reports, each made once without interruption
        proc = report(tmp_path / "runs", tmp_path / f"ref{last}", "--last", last)
        assert proc.wait(120) == 0, proc.stdout.read()
        sets[last] = contents(tmp_path / f"ref{last}")
        assert sorted(sets[last]) == sorted(FILES) and all(sets[last].values()), sorted(sets[last])
    out = tmp_path / "out"
    assert report(tmp_path / "runs", out, "--last", "1").wait(120) == 0
    # Killed inside each file's write, then at moments spread over a whole run: the folder is the first report or
    # the second, never a mix, never an empty file.
    faults = [f"{name}:1" for name in FILES]
    delays = [0.5, 1.5, 2.5, 3.5]
    for fault in faults + [None] * len(delays):
        proc = report(tmp_path / "runs", out, "--last", "2", fault=fault)
        if fault is None:
            time.sleep(delays.pop(0))
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(120)
        found = contents(out)
        assert found in (sets["1"], sets["2"]), (fault, code, {k: len(v) for k, v in found.items()})
        if fault:
            assert code == -signal.SIGKILL and found == sets["1"], (fault, code)
        if found == sets["2"]:  # this kill came too late: back to the first report for the next one
            assert report(tmp_path / "runs", out, "--last", "1").wait(120) == 0
    assert report(tmp_path / "runs", out, "--last", "2").wait(120) == 0
    assert contents(out) == sets["2"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # killed runs' temp folders went


def test_a_torn_metrics_line_names_the_file_and_skip_bad_reports_the_rest(tmp_path, capsys):
    import results

    synthetic_runs(tmp_path / "runs")
    torn = tmp_path / "runs/drawer_close/comet/seed3/metrics.jsonl"
    lines = torn.read_text().splitlines(keepends=True)
    torn.write_text(lines[0] + '{"step": 150, "train/lo\n' + "".join(lines[1:]))  # a torn line inside
    assert results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "a"), "--reps", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{torn}:2: not a JSON line" in err and "--skip_bad" in err, err
    assert not (tmp_path / "a").exists()

    assert results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "b"), "--reps", "100", "--last", "1",
                         "--skip_bad"]) == 0
    out = capsys.readouterr().out
    assert f"note: skipped: {torn}:2: not a JSON line" in out, out
    data = json.loads((tmp_path / "b/results.json").read_text())
    assert any(f"{torn}:2" in note for note in data["left_out"]), data["left_out"]
    assert "skipped" in (tmp_path / "b/results.md").read_text().split("## Left out")[1]
    # comet's seed 3 is gone from both targets (the bootstrap needs every seed on every target); the rest stays
    assert data["protocol"]["seeds"] == {"comet": [0, 1, 2], "dreamer": [0, 1, 2, 3]}, data["protocol"]["seeds"]
    comet = {r["target"]: r["final_success"] for r in data["per_target"] if r["method"] == "comet"}
    assert comet["drawer_close"] == pytest.approx(np.mean(FINAL["comet"]["drawer_close"][:3]))


def test_results_bad_flag_is_one_line(tmp_path, capsys):
    import results

    synthetic_runs(tmp_path / "runs")
    assert results.main([str(tmp_path / "runs"), "--out", str(tmp_path / "a"), "--last", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--last >= 1" in err, err
