"""The committed sweep specs load, build their job graphs, and every job's command line is one its stage script
accepts as given (parsed by the stage's own config loader, no foreign-flag warnings); nothing is run."""
import collections
import pathlib

import pytest

import configs
from envs.tasks import TASKS
from sweeps import jobs as job_graph, spec as spec_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = ROOT / "sweeps" / "specs"


def stage_config(job, capsys):
    """The config the job's stage script would run with; it must warn about nothing."""
    capsys.readouterr()
    config = configs.load_config(job.command[2:], stage=job.command[1])
    assert "warning" not in capsys.readouterr().err, job.name
    return config


def test_paper_pixel_gpu_spec_builds_the_full_comparison(capsys):
    spec = spec_module.load(SPECS / "paper_pixel_gpu.yaml", ROOT)
    jobs = job_graph.build(spec, python="python")
    kinds = collections.Counter(job.name.split("/")[0] for job in jobs)
    # 6 targets x 8 seeds x 4 methods students; OOD for the 3 distilled methods; 2 teachers; data; report.
    assert kinds == {"data": 1, "teachers": 2, "students": 192, "ood": 144, "report": 1}, kinds
    assert set(spec.targets) <= set(TASKS) and not set(spec.targets) & set(spec.source_tasks)
    assert len(spec.source_tasks) == 6 and spec.seeds == list(range(8))
    by_name = {job.name: job for job in jobs}
    assert by_name["data"].num_gpus == 0 and by_name["report"].num_gpus == 0
    for name in ("teachers/moe", "teachers/label_cnn"):
        config = stage_config(by_name[name], capsys)
        assert (config.device, config.precision, config.obs, config.compile) == ("cuda", 16, "pixel", True), name
        assert config.pretrain_iterations == 100_000 and config.n_experts == 6 and config.size == [64, 64], name
    assert stage_config(by_name["teachers/label_cnn"], capsys).teacher_encoder_mode == "label_cnn"
    for job in jobs:
        if job.name.startswith(("students/", "ood/")):
            assert job.num_gpus == 0.25 and job.num_cpus == 4, job.name
    for job in (j for j in jobs if j.name.endswith("/seed0")):  # every target x method, one seed
        config = stage_config(job, capsys)
        assert (config.device, config.obs) == ("cuda", "pixel"), job.name
        if job.name.startswith("students/"):
            assert config.steps == 500_000 and config.batch_size == 50 and config.batch_length == 50, job.name


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")),
                         ids=lambda p: p.name)
def test_other_committed_specs_give_commands_their_stages_accept(path, capsys):
    jobs = job_graph.build(spec_module.load(path, ROOT), python="python")
    for job in jobs:
        if job.command[1] not in ("collect_data.py", "results.py"):
            stage_config(job, capsys)
