"""Task names: every natural form accepted and stored in one form, typos answered with the closest task,
and folders whose manifest records another task refused (real collected data)."""
import json
import subprocess
import sys

import pytest

import collect_data
import configs
import envs
from tools import UsageError
from collection.manifest import MANIFEST, manifest_task
from envs.tasks import TaskNameError, canonical_task, canonical_tasks
from ood.sources import OODInputError, resolve_task_dirs, select_tasks
from tests.conftest import ROOT
from training.sources import load_sources

FORMS = ["drawer-close-v3", "drawer-close", "drawer_close", "metaworld_drawer_close", " Drawer-Close-V3 ",
         "metaworld-drawer-close"]


def test_task_list_mirrors_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert sorted(envs.env_name(t) for t in envs.valid_tasks()) == sorted(ALL_V3_ENVIRONMENTS)
    assert all(canonical_task(envs.env_name(t)) == t for t in envs.TASKS)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_accepted_and_stored_canonically(form):
    assert canonical_task(form) == "metaworld_drawer_close"
    assert envs.env_name(form) == "drawer-close-v3" and envs.short_name(form) == "drawer_close"
    config = configs.load_config(["--task", form, "--source_tasks", f"reach,{form},door-open-v3"])
    assert config.task == "metaworld_drawer_close"
    assert config.source_tasks == ["metaworld_reach", "metaworld_drawer_close", "metaworld_door_open"]


def test_typos_name_the_closest_task():
    with pytest.raises(configs.ConfigError, match=r"--source_tasks: unknown task 'metaworld_reech'; did you mean "
                                                r"'metaworld_reach'\?"):
        configs.load_config(["--source_tasks", "metaworld_reech,metaworld_push"])
    with pytest.raises(configs.ConfigError, match=r"--task: unknown task 'drawer-clsoe'; did you mean "
                                                r"'metaworld_drawer_close'\?"):
        configs.load_config(["--task", "drawer-clsoe"])
    with pytest.raises(TaskNameError, match="listed twice: metaworld_reach"):
        canonical_tasks(["reach", "reach-v3"])
    with pytest.raises(TaskNameError) as err:
        canonical_task("xyzzy")
    assert "did you mean" not in str(err.value) and "drawer-close-v3" in str(err.value)  # no wild guess


def test_typo_stops_pretraining_before_anything_is_written(tmp_path):
    done = subprocess.run([sys.executable, "dreamer_pretrain.py", "--source_tasks", "metaworld_reech",
                           "--source_task_dirs", str(tmp_path / "reach"), "--logdir", str(tmp_path / "t")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "did you mean 'metaworld_reach'?" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "t").exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real state datasets of two tasks, collected under two different spellings (1 short episode each)."""
    out = tmp_path_factory.mktemp("data")
    collect_data.main(["--tasks", "reach-v3,drawer_close", "--episodes", "1", "--obs", "state", "--out", str(out),
                       "--configs", "defaults", "debug", "--time_limit", "20", "--workers", "1", "--progress", "False"])
    return out


def test_manifest_stores_the_canonical_name_and_keeps_it(data):
    manifest = json.loads((data / "reach" / MANIFEST).read_text())
    assert manifest["task"] == "metaworld_reach" and manifest["env"] == "reach-v3"
    # Extending the folder under another spelling neither refuses it nor rewrites the task field.
    collect_data.main(["--tasks", "metaworld_reach", "--episodes", "2", "--obs", "state", "--out", str(data),
                       "--configs", "defaults", "debug", "--time_limit", "20", "--workers", "1", "--progress", "False"])
    manifest = json.loads((data / "reach" / MANIFEST).read_text())
    assert manifest["task"] == "metaworld_reach" and manifest["episodes"] == 2
    assert manifest_task(data / "drawer_close") == "metaworld_drawer_close"


def test_swapped_folders_are_refused(data, tmp_path):
    swapped = [str(data / "drawer_close"), str(data / "reach")]
    config = configs.load_config(["--configs", "defaults", "debug", "--obs", "state", "--source_tasks",
                                "reach,drawer-close", "--source_task_dirs", ",".join(swapped)])
    with pytest.raises(UsageError,
                       match=r"drawer_close holds episodes of 'metaworld_drawer_close' \(its manifest.json\), but it "
                             r"is listed for task 'metaworld_reach'"):
        load_sources(config)
    with pytest.raises(OODInputError, match="--source_dir: .* holds episodes of 'metaworld_drawer_close'"):
        resolve_task_dirs(",".join(swapped), config.source_tasks, "--source_dir")
    # The right order loads, and OOD finds the folders under a root by any spelling of the teacher's tasks.
    config.source_task_dirs = swapped[::-1]
    sources, act_dim, _ = load_sources(config)
    assert len(sources) == 2 and act_dim == envs.ACTION_DIM
    assert resolve_task_dirs(str(data), ["reach-v3", "metaworld_drawer_close"], "--source_dir") == [
        data / "reach", data / "drawer_close"]
    assert select_tasks(["metaworld_reach", "metaworld_drawer_close"], ["drawer-close-v3"]) == [1]
