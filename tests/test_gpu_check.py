"""bench/gpu_check.py's dry run (CPU, tiny sizes): the script a GPU machine runs stays runnable between the
rare times one is available. torch.compile is left out here (minutes of CPU compilation; tests/test_compile.py
covers it), CUDA-graph capture skips itself on a CPU (tests/test_graphs.py covers it on CUDA)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout_hint(150)
def test_gpu_check_dry_run_measures_every_part(tmp_path):
    command = [sys.executable, "bench/gpu_check.py", "--dry-run", "--skip", "compile", "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["failed_parts"] == [] and result["device"] == "cpu", result["failed_parts"]
    assert result["machine"]["frame_shape"] == [64, 64, 3] and result["machine"]["render_sec_per_frame"] > 0
    tests = result["tests"]
    assert tests["returncode"] == 0 and tests["collected"] >= 6, tests
    for name in ("teacher_fp32", "teacher_bf16", "student_plain_bf16", "student_distill_bf16"):
        assert result[name]["sec_per_update"] > 0 and result[name]["cpu_ops_per_update"] > 100, name
    for kind in ("teacher", "student_plain", "student_distill"):
        assert result[f"{kind}_bf16_graphs"] == {"skipped": "CUDA graphs need a CUDA device"}, kind
        for mode in ("bf16_compile", "bf16_compile_graphs"):
            assert result[f"{kind}_{mode}"] == {"skipped": "--skip"}, (kind, mode)
    concurrent = result["concurrent_bf16"]
    assert concurrent["1"]["updates_per_s_total"] > 0 and concurrent["2"]["updates_per_s_total"] > 0, concurrent
    assert set(concurrent["scaling"]) == {"1", "2"} and concurrent["k"] == 2
    loop = result["loop_distill_bf16"]
    assert loop["env_steps_per_s_training"] > 0 and loop["distill_k"] == 2, loop
    assert result["policy_fp32"]["sec_median"] > 0
    summary = result["summary"]
    assert summary["bf16"]["student_distill_ms"] > 0 and set(summary["best"]) == {"teacher", "student_plain",
                                                                               "student_distill"}
    assert summary["concurrent"]["most_run"] == 2 and summary["run_150k_env_steps"]["updates"] == 29_100
    assert summary["run_150k_env_steps"]["loop_bf16_minutes"] > 0
    assert (tmp_path / "gpu_check.log").read_text().count("[gpu_check]") >= 2 * 9
    assert "tests/test_device.py::test_pixel_pipeline" in (tmp_path / "pytest.log").read_text()
