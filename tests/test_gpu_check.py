"""bench/gpu_check.py's dry run (CPU, tiny sizes): the script a GPU machine runs stays runnable between the
rare times one is available. torch.compile is left out here (minutes of CPU compilation); its path is
covered by tests/test_device.py on CUDA."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout_hint(90)
def test_gpu_check_dry_run_measures_every_part(tmp_path):
    command = [sys.executable, "bench/gpu_check.py", "--dry-run", "--skip", "compile", "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["failed_parts"] == [] and result["device"] == "cpu", result["failed_parts"]
    assert result["machine"]["frame_shape"] == [64, 64, 3] and result["machine"]["render_sec_per_frame"] > 0
    tests = result["tests"]
    assert tests["returncode"] == 0 and tests["collected"] >= 6, tests
    for kind in ("teacher", "student_plain", "student_distill"):
        for mode in ("fp32", "bf16"):
            assert result[f"{kind}_{mode}"]["sec_per_update"] > 0, (kind, mode)
        assert result[f"{kind}_bf16_compile"] == {"skipped": "--skip"}
    assert result["policy_fp32"]["sec_median"] > 0
    assert result["loop_bf16"]["env_steps_per_s_training"] > 0, result["loop_bf16"]
    assert result["summary"]["fp32"]["distill_over_plain"] > 0
    assert (tmp_path / "gpu_check.log").read_text().count("[gpu_check]") >= 2 * 10
    assert "tests/test_device.py::test_pixel_pipeline" in (tmp_path / "pytest.log").read_text()
