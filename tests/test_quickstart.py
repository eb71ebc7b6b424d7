"""The README's first command (python -m sweeps.quickstart) end to end at test scale: a real sweep on a local Ray over the real
env and real files, ending with the results table and the curves plot."""
import json
import subprocess
import sys

import pytest

from sweeps import quickstart
from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout_hint(240)
def test_quickstart_sweep_ends_with_a_results_table_and_curves(tmp_path):
    root = tmp_path / "qs"
    command = [sys.executable, "-m", "sweeps.quickstart", "--scale", "test", "--root", str(root), "--seeds", "0",
               "--num_cpus", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "6/6 jobs done (0 from before, 6 now), 0 failed" in out, out
    # The table is printed, and the report and plot are where the last lines say.
    report = root / "report"
    for row in ("| drawer_close | comet | 1 |", "| drawer_close | dreamer | 1 |", "## Across targets"):
        assert row in out and row in (report / "results.md").read_text(), row
    assert f"{report / 'results.md'}" in out and f"{report / 'curves.png'}" in out
    assert (report / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "teachers" / "moe" / "teacher.pt").is_file()
    for method in ("comet", "dreamer"):
        run = root / "students" / "drawer_close" / method / "seed0"
        assert list((run / "train_eps").glob("*.npz")) and (run / "metrics.jsonl").is_file(), method
    ood = json.loads((root / "ood" / "drawer_close" / "comet" / "seed0" / "ood_report.json").read_text())
    # The random prefill episode (40 env steps of 160) is not part of the student's OOD set.
    assert ood["student"]["n"] == 3 and "left out 1 of 4 episodes" in ood["student"]["selection"][0]
    # Each job runs with one torch thread and gets only the flags its stage reads (no warnings).
    logs = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.log") if p.parent != root or
            p.name not in ("sweep.log", "ray.log")}  # the jobs' logs, not the sweep's own
    assert len(logs) == 6, sorted(logs)
    assert "done students/drawer_close/comet/seed0" in (root / "sweep.log").read_text()
    assert all("--threads 1" in text for name, text in logs.items() if name.startswith(("teachers/", "students/")))
    assert "--ood_threads 1" in logs["ood/drawer_close/comet/seed0.log"]
    assert not any("has no effect here" in text for text in logs.values()), logs
    # A second run finds every job done, starts no Ray job and prints the same table.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "6/6 jobs done (6 from before, 0 now)" in again.stdout and "[sweep] started" not in again.stdout
    assert "| drawer_close | comet | 1 |" in again.stdout


def test_quickstart_flags_shape_the_sweep(tmp_path, capsys):
    root = tmp_path / "qs"
    assert quickstart.main(["--root", str(root), "--seeds", "3,4", "--steps", "600", "--threads", "2",
                            "--dry_run"]) == 0
    commands = capsys.readouterr().out.splitlines()
    students = [c for c in commands if c.startswith("students/")]
    assert len(students) == 4 and sum("/seed3:" in c for c in students) == 2, students
    assert all("--steps 600 --prefill 120 --eval_every 200" in c and "--threads 2" in c for c in students), students
    assert (root / "quickstart_sweep.yaml").is_file() and not (root / "students").exists()


@pytest.mark.parametrize("flags, message", [(["--seeds", "a,1"], "--seeds"), (["--steps", "5"], "--steps")])
def test_quickstart_bad_flag_is_one_line(tmp_path, capsys, flags, message):
    assert quickstart.main(["--root", str(tmp_path / "qs"), *flags, "--dry_run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"comet-quickstart: error: {message}"), err
