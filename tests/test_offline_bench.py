"""bench/distill_offline.py in pixels at toy scale: real collected episodes (pixels with the state kept for the
probe), a real pretrained pixel teacher, every kind of arm; what it reports per arm."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tools
from bench import distill_offline

BLOCKS = ["--configs", "defaults", "metaworld", "debug", "--progress", "False"]


@pytest.fixture(scope="module")
def pixel_setup(tmp_path_factory):
    import collect_data
    import dreamer_pretrain

    root = tmp_path_factory.mktemp("offline")
    assert collect_data.main(["--tasks", "metaworld_reach,metaworld_push", "--episodes", "2", "--obs", "pixel",
                              "--workers", "1", "--out", str(root / "source"), "--seed", "0", *BLOCKS]) == 0
    assert collect_data.main(["--tasks", "metaworld_handle_press", "--episodes", "6", "--obs", "both",
                              "--workers", "1", "--out", str(root / "target"), "--seed", "1", *BLOCKS]) == 0
    dirs = f"{root / 'source' / 'reach'},{root / 'source' / 'push'}"
    assert dreamer_pretrain.main([*BLOCKS, "--threads", "1", "--source_tasks", "metaworld_reach,metaworld_push",
                                  "--source_task_dirs", dirs, "--logdir", str(root / "teacher")]) == 0
    return root


@pytest.mark.slow
@pytest.mark.timeout_hint(90)
def test_offline_check_in_pixels_reports_nll_probe_and_shares_per_arm(pixel_setup, capsys):
    root = pixel_setup
    arms = "none,w1,w100,auto,prior@auto,open_loop@1,random@auto"
    out = root / "offline.json"
    common = ["--data", str(root / "target" / "handle_press"), "--teacher", str(root / "teacher" / "teacher.pt"),
              "--seeds", "0", "--updates", "4", "--eval_every", "2", "--held_out", "0.34", "--records",
              str(root / "records"), *BLOCKS, "--grad_share_every", "1", "--distill_horizon", "3"]
    distill_offline.main(["--arms", "none,w1", *common])  # one process runs some arms first ...
    capsys.readouterr()
    result = distill_offline.main(["--arms", arms, "--out", str(out), *common])  # ... a later one all of them
    assert capsys.readouterr().err.count("read from") == 2
    with pytest.raises(tools.UsageError, match="other settings"):
        distill_offline.main(["--arms", "none", *common, "--model_lr", "1e-3"])
    assert json.loads(out.read_text())["arms"] == arms.split(",")
    summary = result["final_held_out"]
    assert list(summary) == arms.split(",") and result["eval_updates"] == [0, 2, 4]
    for arm, entry in summary.items():
        assert {"model_loss", "image", "reward", "kl_value", "probe_r2"} <= set(entry), arm
        assert np.isfinite(entry["image"]["mean"]) and np.isfinite(entry["probe_r2"]["mean"]), arm
        assert bool(entry["shares"]) == (arm != "none") and ("teacher_probe" in entry) == (arm != "none"), arm
    assert "state" not in summary["none"]  # a pixel student reconstructs images only
    # r scales with the fixed weight; auto's coefficient is what it settled on, logged beside r.
    assert summary["w100"]["shares"]["r_all"] > 20 * summary["w1"]["shares"]["r_all"]
    assert summary["w1"]["shares"]["scale_all"] == pytest.approx(1.0)
    assert summary["auto"]["shares"]["scale_last_third"] != pytest.approx(1.0)
    # The random teacher reads the same episodes through re-initialised weights.
    assert summary["random@auto"]["teacher_probe"] != summary["auto"]["teacher_probe"]


def test_arms_are_read_or_refused_with_one_line():
    assert distill_offline.arm_overrides("none") is None
    assert distill_offline.arm_overrides("w1000") == {"distill_weight": "1000.0"}
    assert distill_offline.arm_overrides("open_loop@auto") == {"distill_weight": "auto", "distill_target": "open_loop"}
    assert distill_offline.arm_overrides("random@10") == {"distill_weight": "10.0", "teacher_random_seed": 0}
    assert distill_offline.arm_overrides("prior+random@auto") == {"distill_weight": "auto", "distill_target": "prior",
                                                                  "teacher_random_seed": 0}
    for bad in ("w", "we", "prior", "prior@", "magic@1", "w1x", "random@e", "prior+@1", "prior+magic@1"):
        with pytest.raises(tools.UsageError, match="--arms"):
            distill_offline.arm_overrides(bad)


def test_records_agree_on_the_config_keys_both_sides_know():
    base = {"data": "d", "updates": 4, "config": {"model_lr": 1e-3, "seed": 0}}
    assert distill_offline.same_settings(base, {**base, "config": {**base["config"], "new_key": 1}})
    assert not distill_offline.same_settings(base, {**base, "config": {"model_lr": 2e-3, "seed": 0}})
    assert not distill_offline.same_settings(base, {**base, "updates": 5})


def test_summary_takes_each_view_over_the_seeds_that_kept_it():
    point = {"update": 0, "model_loss": 1.0, "probe_r2": 0.5}
    runs = [{"arm": "w1", "seed": s, "curve": [point, point], "shares": [{"update": 0, "r": 0.1, "scale": 1.0}],
             "teacher_probe": {"probe/teacher_r2": 0.2 + s, f"probe/teacher_r2_{view}": 0.1 + s}}
            for s, view in ((0, "reach"), (1, "push"))]
    probe = distill_offline.summarise(runs)["w1"]["teacher_probe"]
    assert probe == {"probe/teacher_r2": 0.7, "probe/teacher_r2_push": 1.1, "probe/teacher_r2_reach": 0.1}
