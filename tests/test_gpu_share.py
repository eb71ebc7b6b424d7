"""Several students per GPU: `num_gpus: auto` (the default) gives each CUDA job 1/N of a GPU, N from its kind's
peak memory (sweeps/gpu_share.py); CPU jobs, data collection and the report get none; an explicit number is
kept; a bad value is one line naming the spec and the key. Nothing runs (job graphs only)."""
import math

import pytest

from sweeps import gpu_share, jobs as job_graph, spec as spec_module
from tests.test_sweep_specs import ROOT

SPEC = """root: {root}
resources: {{num_cpus: 2{gpus}}}
flags: {{configs: [defaults, metaworld, quickstart], device: {device}}}
collect: {{tasks: [metaworld_reach, metaworld_door_open], flags: {{obs: state}}}}
teachers: {{moe: {{flags: {{pretrain_iterations: 3}}}}}}
students:
  targets: [metaworld_drawer_close]
  seeds: [0, 1]
  methods:
    dreamer: {{flags: {{use_distill: False}}}}
    comet: {{teacher: moe, flags: {{use_distill: True}}}}
ood: true
"""


def job_gpus(tmp_path, device: str, gpus: str = "") -> dict:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(root=tmp_path / "sweep", device=device, gpus=gpus))
    return {job.name.split("/")[0]: job.num_gpus for job in job_graph.build(spec_module.load(path, ROOT), "python")}


def test_students_per_gpu_follow_memory():
    for kind in gpu_share.PEAK_GIB:
        need = gpu_share.PEAK_GIB[kind] * gpu_share.ALLOCATOR + gpu_share.CONTEXT_GIB
        for gib in (16, 40, 80, 141):
            n = gpu_share.jobs_per_gpu(kind, gib)
            assert n == max(1, min(gpu_share.MAX_JOBS_PER_GPU, math.floor(gib * gpu_share.USABLE / need))), (kind, gib)
            share = gpu_share.fraction(kind, gib)
            assert n * share <= 1 and (n + 1) * share > 1 and round(share, 4) == share, (kind, gib, share)
    assert gpu_share.jobs_per_gpu("student", 4) == 1  # a job too big for the estimate still gets a whole GPU
    assert gpu_share.jobs_per_gpu("student", 141) >= gpu_share.jobs_per_gpu("student", 80)
    assert gpu_share.jobs_per_gpu("student", 141) > 1, "an H200 holds several paper-config students"


def test_auto_shares_gpus_only_for_cuda_jobs(tmp_path):
    cuda = job_gpus(tmp_path, "cuda")
    expected = {kind: gpu_share.fraction(kind) for kind in ("teacher", "student", "ood")}
    assert cuda == {"data": 0, "teachers": expected["teacher"], "students": expected["student"],
                    "ood": expected["ood"], "report": 0}, cuda
    assert 0 < cuda["students"] < 1
    assert job_gpus(tmp_path, "cpu") == dict.fromkeys(cuda, 0)
    assert job_gpus(tmp_path, "cuda", ", num_gpus: auto") == cuda
    explicit = job_gpus(tmp_path, "cuda", ", num_gpus: 0.5")
    assert explicit == {"data": 0, "teachers": 0.5, "students": 0.5, "ood": 0.5, "report": 0}, explicit


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_bad_gpu_share_is_one_line(tmp_path, value):
    with pytest.raises(spec_module.SpecError) as err:
        job_gpus(tmp_path, "cuda", f", num_gpus: {value}")
    message = str(err.value)
    assert "\n" not in message and "spec.yaml" in message and "resources.num_gpus" in message and "auto" in message
