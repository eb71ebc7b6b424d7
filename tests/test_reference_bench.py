"""bench/reference_side_by_side.py on our side at tiny sizes (the reference code is not part of the
repository): every kind of update runs in its own worker process and reports what it trained."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH = [sys.executable, "bench/reference_side_by_side.py"]


@pytest.mark.slow
@pytest.mark.timeout_hint(60)
def test_quick_run_times_our_student_and_distillation_updates(tmp_path):
    cases = "student_wm_8x50_2t,student_full_8x50_2t,distill_wm_16x50_1t"
    out = tmp_path / "side_by_side.json"
    command = [*BENCH, "--quick", "--rounds", "1", "--warmup", "0", "--reps", "1", "--cases", cases,
               "--variants", "ours,ours:teacher32", "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["cases"]
    assert set(rows) == set(cases.split(","))
    wm, full, distill = rows["student_wm_8x50_2t"], rows["student_full_8x50_2t"], rows["distill_wm_16x50_1t"]
    assert [r["update"] for r in (wm, full, distill)] == ["student_wm", "student_full", "distill_wm"]
    assert all(r["batch"] == [2, 8] for r in rows.values())
    # ours:teacher32 applies to the distillation case only; no reference without --ref.
    assert "ours:teacher32" not in wm and "ours:teacher32" in distill and "ref" not in distill
    for row in rows.values():
        for impl in ("ours", "ours:teacher32"):
            if impl in row:
                assert row[impl]["sec"] > 0 and row[impl]["cpu_sec"] > 0 and row[impl]["peak_rss_gib"] > 0.1
    assert set(wm["ours"]["param_counts"]) == {"world_model"}
    assert set(full["ours"]["param_counts"]) == {"world_model", "actor", "critic"}
    assert full["ours"]["param_counts"]["world_model"] == wm["ours"]["param_counts"]["world_model"]
    assert set(distill["ours"]["param_counts"]) == {"world_model", "distiller"}


@pytest.mark.parametrize("flags, message", [(["--variants", "ours,ours:fast"], "--variants: unknown ['ours:fast']"),
                                            (["--cases", "student_9x9"], "--cases: unknown ['student_9x9']"),
                                            (["--ref", "/nonexistent"], "--ref /nonexistent: no models_pretrain.py")])
def test_bad_flags_end_with_one_line(flags, message):
    proc = subprocess.run([*BENCH, *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
