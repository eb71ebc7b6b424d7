"""The README's pipeline (quickstart.py) end to end at test scale, on the real env and real files."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout_hint(300)
def test_quickstart_pipeline_runs_at_test_scale(tmp_path):
    root = tmp_path / "qs"
    command = [sys.executable, "quickstart.py", "--scale", "test", "--root", str(root), "--threads", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (root / "teacher" / "teacher.pt").is_file()
    for student in ("comet", "dreamer"):
        assert list((root / student / "train_eps").glob("*.npz")), student
        assert (root / student / "metrics.jsonl").is_file()
    report = json.loads((root / "ood" / "ood_report.json").read_text())
    assert report, "empty OOD report"
    # The random prefill episode (60 env steps of 120) is not part of the student's OOD set.
    assert report["student"]["n"] == 1 and "left out 1 of 2 episodes" in report["student"]["selection"][0]
    # --threads reaches the stages, and each stage gets only the flags it reads (no warnings).
    assert result.stdout.count("--threads 1") == 3 and "--ood_threads 1" in result.stdout
    assert "has no effect here" not in result.stdout
    assert "pipeline finished" in result.stdout
    # A second run finds every stage done and does nothing.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already done") == 5, again.stdout
