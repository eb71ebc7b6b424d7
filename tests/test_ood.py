"""OOD detection: statistics against direct computations, splits, report determinism, the
command line end to end (with a stand-in teacher, and with a real tiny teacher when the
pretraining stage is available) and bad-input errors."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import torch

import ood_detection
from envs import short_name
from ood import pipeline
import replay
from ood import stats
from ood.detector import Detector
from ood.sources import OODInputError, resolve_task_dirs, select_tasks, split_fit_calib
from ood.summary import bin_index

TASKS = ["metaworld_reach", "metaworld_drawer_close", "metaworld_door_open"]
OUTPUTS = ["ood_report.json", "ood_episodes.csv", "score_hist_min.png", "score_hist_mixture.png", "roc.png",
           "distance_per_task.png", "config.yaml"]


# --- statistics ----------------------------------------------------------------------------------

def _correlated(rng, m, f, shift=0.0):
    return rng.normal(size=(m, f)) @ rng.normal(size=(f, f)) + shift


@pytest.mark.parametrize("method", ["ledoit_wolf", "oas"])
@pytest.mark.parametrize("m,f", [(12, 30), (40, 8), (300, 3)])
def test_shrinkage_and_mahalanobis_match_direct_computation(method, m, f):
    rng = np.random.default_rng(m * f)
    x = _correlated(rng, m, f, shift=2.0)
    g = stats.fit_gaussian(x, method)
    s = np.cov(x, rowvar=False, bias=True)  # ML covariance
    mu = np.trace(s) / f
    xc = x - x.mean(0)
    if method == "ledoit_wolf":
        # the textbook definition, with the per-sample outer products written out
        d2 = np.linalg.norm(s - mu * np.eye(f), "fro") ** 2 / f
        b2 = sum(np.linalg.norm(np.outer(r, r) - s, "fro") ** 2 for r in xc) / m ** 2 / f
        rho = min(b2, d2) / d2
    else:
        tr2, tr = np.trace(s @ s), np.trace(s)
        rho = min(((1 - 2 / f) * tr2 + tr ** 2) / ((m + 1 - 2 / f) * (tr2 - tr ** 2 / f)), 1.0)
    assert g.shrinkage == pytest.approx(rho, rel=1e-9)
    assert 0.0 <= g.shrinkage <= 1.0
    np.testing.assert_allclose(g.cov, (1 - rho) * s + rho * mu * np.eye(f), rtol=1e-9, atol=1e-12)
    queries = rng.normal(size=(5, f)) * 3
    vi = np.linalg.inv(g.cov)
    direct = [scipy.spatial.distance.mahalanobis(q, x.mean(0), vi) ** 2 for q in queries]
    np.testing.assert_allclose(stats.mahalanobis_sq(queries, g), direct, rtol=1e-7)


def test_shrinkage_grows_when_samples_are_few():
    rng = np.random.default_rng(0)
    # anisotropic truth, so shrinking towards the identity only pays when samples are scarce
    scale = np.linspace(0.2, 3.0, 50)
    few = stats.fit_gaussian(rng.normal(size=(10, 50)) * scale)
    many = stats.fit_gaussian(rng.normal(size=(5000, 50)) * scale)
    assert few.shrinkage > 0.5 and many.shrinkage < 0.05
    assert np.all(np.linalg.eigvalsh(few.cov) > 0), "shrunk covariance must be positive definite"


def test_min_and_mixture_scores():
    d = np.array([[4.0, 1.0, 9.0], [0.0, 0.0, 0.0], [1e4, 2e4, 3e4]])
    smin, closest = stats.min_score(d)
    np.testing.assert_array_equal(smin, [1.0, 0.0, 1e4])
    np.testing.assert_array_equal(closest, [1, 0, 0])
    mix = stats.mixture_score(d)
    assert np.isfinite(mix).all(), "large distances must not underflow to -log 0"
    np.testing.assert_allclose(mix[:2], -np.log(np.mean(np.exp(-d[:2] / 2), axis=1)))
    # uniform mixture lies between min/2 and min/2 + log K
    assert np.all(mix >= smin / 2 - 1e-9) and np.all(mix <= smin / 2 + np.log(3) + 1e-9)
    w = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(stats.mixture_score(d[:1], w), -np.log(np.sum(w * np.exp(-d[0] / 2))))


def test_auroc_and_fpr_known_cases():
    assert stats.auroc([0, 1, 2], [1.5, 3]) == pytest.approx(5 / 6)
    assert stats.auroc([1, 1], [1, 1]) == 0.5                      # ties count half
    assert stats.auroc([0, 1], [2, 3]) == 1.0 and stats.auroc([2, 3], [0, 1]) == 0.0
    neg = np.arange(100.0)
    pos = np.arange(20.0) + 90.5                                   # 90.5 .. 109.5
    # 95% of 20 positives = 19 flagged -> threshold 91.5 -> negatives 92..99 flagged
    assert stats.fpr_at_tpr(neg, pos, 0.95) == pytest.approx(8 / 100)
    fpr, tpr, thr = stats.roc_curve(neg, pos)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(stats.auroc(neg, pos))


def test_frechet_distance():
    rng = np.random.default_rng(1)
    x, y = _correlated(rng, 400, 4), _correlated(rng, 300, 4, shift=1.0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    direct = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx + cy)
              - 2 * np.trace(scipy.linalg.sqrtm(cx @ cy).real))
    assert stats.frechet_distance(x, y) == pytest.approx(direct, rel=1e-6)
    assert stats.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # fewer rows than features: rank-deficient covariances still give a finite, real, >= 0 value
    few = stats.frechet_distance(rng.normal(size=(5, 40)), rng.normal(size=(6, 40)) + 1)
    assert np.isfinite(few) and few > 0


def test_detector_separated_and_identical():
    rng = np.random.default_rng(2)
    k, f = 3, 6
    centres = [rng.normal(size=f) * 0 + 10 * i for i in range(k)]

    def task_emb(centre, m):  # (M, K, F): every view sees the same point here
        return np.repeat((rng.normal(size=(m, f)) + centre)[:, None], k, axis=1)

    det = Detector.fit([task_emb(c, 60) for c in centres])
    held = [task_emb(c, 40) for c in centres]
    held_scores = det.score(np.concatenate(held))
    labels = np.repeat(np.arange(k), 40)
    assert np.mean(held_scores["closest"] == labels) == 1.0
    far = det.score(task_emb(np.full(f, -40.0), 50))
    same = det.score(task_emb(centres[1], 120))
    for name in ("min", "mixture"):
        assert stats.auroc(held_scores[name], far[name]) == 1.0
        assert abs(stats.auroc(held_scores[name][labels == 1], same[name]) - 0.5) < 0.15


# --- splits and inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 10, 57])
def test_split_disjoint_and_seeded(n):
    files = [pathlib.Path(f"ep{i:03d}.npz") for i in range(n)]
    fit, calib = split_fit_calib(files, 0.7, 0.3, seed=0, task_index=1)
    assert not set(fit) & set(calib)
    assert len(fit) == round(0.7 * n) and len(fit) + len(calib) <= n and calib
    assert (fit, calib) == split_fit_calib(files[::-1], 0.7, 0.3, seed=0, task_index=1)
    assert split_fit_calib(files, 0.7, 0.3, seed=1, task_index=1) != (fit, calib) or n < 5
    fit2, calib2 = split_fit_calib(files, 0.5, 0.25, seed=0, task_index=1)
    assert len(fit2) + len(calib2) <= n and not set(fit2) & set(calib2)


def test_task_selection_and_dirs(tmp_path):
    assert select_tasks(TASKS, []) == [0, 1, 2]
    assert select_tasks(TASKS, ["metaworld_door_open", "metaworld_reach"]) == [2, 0]
    with pytest.raises(OODInputError, match="no source task"):
        select_tasks(TASKS, ["metaworld_push"])
    for name in ("reach", "metaworld_drawer_close", "door_open"):
        (tmp_path / name).mkdir()
    dirs = resolve_task_dirs(str(tmp_path), TASKS, "--source_dir")
    assert [d.name for d in dirs] == ["reach", "metaworld_drawer_close", "door_open"]
    listed = resolve_task_dirs(f"{tmp_path}/door_open,{tmp_path}/reach", TASKS[:2], "--source_dir")
    assert [d.name for d in listed] == ["door_open", "reach"]   # a list is taken in task order, names ignored
    with pytest.raises(OODInputError, match="2 folders but there are 3"):
        resolve_task_dirs(f"{tmp_path}/reach,{tmp_path}/door_open", TASKS, "--source_dir")
    assert list(bin_index(7, 3)) == [0, 0, 0, 1, 1, 2, 2]


# --- end to end with a stand-in teacher ---------------------------------------------------------

class StandInTeacher(torch.nn.Module):
    """Same interface as the teacher: view k maps the running mean of the state through its own
    fixed linear map, so the posterior is causal like the real one."""

    def __init__(self, k=3, f=6, obs=39):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.maps = torch.nn.Parameter(torch.randn(k, obs, f, generator=gen, dtype=torch.float64) / obs ** 0.5)

    def preprocess(self, batch):
        return {key: torch.as_tensor(value) for key, value in batch.items()}

    def task_features(self, data, tasks, sample=False):
        state = data["state"].double()                                   # (B, T, 39)
        steps = torch.arange(1, state.shape[1] + 1, dtype=torch.float64)
        running = state.cumsum(1) / steps[None, :, None]                 # causal
        return torch.stack([running @ self.maps[k] for k in tasks]).float()  # (V, B, T, F)


def _episode(rng, centre, length=12, obs="state"):
    ep = {
        "action": np.zeros((length, 4), np.float32), "reward": np.zeros(length, np.float32),
        "discount": np.ones(length, np.float32), "success": np.zeros(length, np.float32),
        "is_first": np.eye(1, length, dtype=bool)[0], "is_terminal": np.zeros(length, bool),
    }
    ep["success"][-3:] = rng.random() < 0.5
    if obs == "state":
        ep["state"] = (rng.normal(size=(length, 39)) * 0.5 + centre).astype(np.float32)
    else:
        ep["image"] = rng.integers(0, 255, size=(length, 8, 8, 3), dtype=np.uint8)
    return ep


def _write(directory, episodes):
    for i, ep in enumerate(episodes):
        replay.save_episode(directory, ep, filename=f"ep{i:04d}.npz")


@pytest.fixture()
def synthetic(tmp_path):
    rng = np.random.default_rng(3)
    centres = [rng.normal(size=39) * 2 for _ in TASKS]
    root = tmp_path / "data"
    for task, centre in zip(TASKS, centres):
        name = short_name(task)
        _write(root / "src" / name, [_episode(rng, centre, length=10 + i % 4) for i in range(24)])
        _write(root / "heldout" / name, [_episode(rng, centre) for _ in range(10)])
    far = rng.normal(size=39) * 2 + 3
    _write(root / "student", [_episode(rng, far if i % 2 else centres[0]) for i in range(20)])
    _write(root / "pixel", [_episode(rng, 0, obs="pixel") for _ in range(3)])
    (root / "empty").mkdir()
    return root


def _run(monkeypatch, argv, obs="state", tasks=TASKS):
    monkeypatch.setattr(pipeline, "frozen_teacher",
                        lambda path, device: (StandInTeacher(len(tasks)).eval(),
                                              {"source_tasks": list(tasks), "config": {"obs": obs},
                                               "encoder_mode": "moe"}))
    return ood_detection.main(argv)


def _argv(root, out, *extra):
    return ["--teacher_model_path", "teacher.pt", "--source_dir", str(root / "src"),
            "--student_dir", str(root / "student"), "--out", str(out), "--ood_batch", "5", *extra]


def test_end_to_end_stand_in_teacher(synthetic, tmp_path, monkeypatch, capsys):
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    assert _run(monkeypatch, _argv(synthetic, out1, "--ood_bins", "3", "--id_dir", str(synthetic / "heldout"))) == 0
    stdout = capsys.readouterr().out
    assert "AUROC" in stdout and "OOD rate" in stdout
    for name in OUTPUTS + ["ood_bins.png", "ood_embeddings.npz"]:
        assert (out1 / name).is_file(), f"missing output {name}"
    assert list(out1.glob("events.out.tfevents.*")), "no TensorBoard event file"
    report = json.loads((out1 / "ood_report.json").read_text())
    for task in TASKS:
        split = report["split"][task]
        assert split["fit"] and split["calib"] and not set(split["fit"]) & set(split["calib"])
        assert len(split["fit"]) + len(split["calib"]) == 24
    assert report["in_distribution"]["source"] == "--id_dir" and report["in_distribution"]["n"] == 30
    assert report["in_distribution"]["closest_task_accuracy"]["overall"] == 1.0
    assert report["student"]["n"] == 20 and len(report["bins"]) == 3
    assert sum(b["n"] for b in report["bins"]) == 20
    assert report["student"]["closest_task_histogram"]["metaworld_reach"] >= 10
    assert report["student"]["success_rule"].startswith("any step")
    # half the student's episodes come from a far-away distribution
    assert report["student"]["ood_rate"] == pytest.approx(0.5, abs=0.15)
    csv_lines = (out1 / "ood_episodes.csv").read_text().splitlines()
    assert csv_lines[0].startswith("file,score_min,score_mixture,closest_task,ood,")
    assert len(csv_lines) == 21

    # same input -> identical report and per-episode table
    assert _run(monkeypatch, _argv(synthetic, out2, "--ood_bins", "3", "--id_dir", str(synthetic / "heldout"))) == 0
    assert (out1 / "ood_report.json").read_bytes() == (out2 / "ood_report.json").read_bytes()
    assert (out1 / "ood_episodes.csv").read_bytes() == (out2 / "ood_episodes.csv").read_bytes()


def test_calibration_split_self_check(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert _run(monkeypatch, _argv(synthetic, out, "--shrinkage", "oas", "--ood_score", "min")) == 0
    report = json.loads((out / "ood_report.json").read_text())
    assert report["in_distribution"]["source"] == "calibration split"
    assert report["detection"]["min"]["auroc"] is not None
    assert report["bins"] == [] and report["settings"]["shrinkage"] == "oas"


@pytest.mark.parametrize("case,match", [
    ("no_episodes", "no episode files"),
    ("wrong_obs", "trained on 'pixel' observations"),
    ("unknown_task", "teacher has no source task"),
    ("id_overlaps_fit", "also in the fit split"),
    ("missing_task_dir", "no folder for task"),
])
def test_bad_input_one_error_line(synthetic, tmp_path, monkeypatch, capsys, case, match):
    out = tmp_path / "o"
    argv, obs = _argv(synthetic, out), "state"
    if case == "no_episodes":
        argv = _argv(synthetic, out, "--student_dir", str(synthetic / "empty"))
    elif case == "wrong_obs":
        obs = "pixel"
    elif case == "unknown_task":
        argv = _argv(synthetic, out, "--source_tasks", "metaworld_reach,metaworld_push")
    elif case == "id_overlaps_fit":
        argv = _argv(synthetic, out, "--id_dir", str(synthetic / "src"))
    elif case == "missing_task_dir":
        argv = _argv(synthetic, out, "--source_dir", str(synthetic / "heldout"))
        (synthetic / "heldout" / "door_open").rename(synthetic / "heldout" / "elsewhere")
    assert _run(monkeypatch, argv, obs=obs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ood_detection: error:") and match in err[0], err


def test_pixel_episodes_for_state_teacher(synthetic, tmp_path, monkeypatch, capsys):
    argv = _argv(synthetic, tmp_path / "o", "--student_dir", str(synthetic / "pixel"))
    assert _run(monkeypatch, argv) == 2
    assert "trained on 'state' observations" in capsys.readouterr().err


# --- end to end with real teacher checkpoints ----------------------------------------------------

def _save_teacher(path, obs="state", tasks=TASKS):
    import tools
    import configs
    from models import TeacherWorldModel, teacher_payload

    config = configs.load_config(["--configs", "defaults", "debug", "--obs", obs,
                                "--source_tasks", ",".join(tasks)])
    torch.manual_seed(0)
    model = TeacherWorldModel(config, act_dim=4)
    tools.save_checkpoint(path, teacher_payload(model, None, 0, config))
    return path


def test_end_to_end_real_checkpoint(synthetic, tmp_path, capsys):
    teacher = _save_teacher(tmp_path / "teacher.pt")
    out = tmp_path / "o"
    argv = ["--teacher_model_path", str(teacher), "--source_dir", str(synthetic / "src"), "--student_dir",
            str(synthetic / "student"), "--id_dir", str(synthetic / "heldout"), "--out", str(out), "--ood_bins", "2"]
    assert ood_detection.main(argv) == 0, capsys.readouterr().err
    for name in OUTPUTS:
        assert (out / name).is_file(), f"missing output {name}"
    report = json.loads((out / "ood_report.json").read_text())
    assert report["teacher"]["obs"] == "state" and report["student"]["n"] == 20
    assert report["detection"]["mixture"]["auroc"] is not None
    # a subset of the teacher's tasks, in another order, uses the matching views
    out2 = tmp_path / "o2"
    argv2 = argv[:-4] + ["--out", str(out2), "--source_tasks", "metaworld_door_open,metaworld_reach"]
    assert ood_detection.main(argv2) == 0, capsys.readouterr().err
    report2 = json.loads((out2 / "ood_report.json").read_text())
    assert report2["task_views"] == [2, 0] and report2["tasks"] == ["metaworld_door_open", "metaworld_reach"]


def test_pixel_teacher_rejects_state_episodes(synthetic, tmp_path, capsys):
    teacher = _save_teacher(tmp_path / "teacher.pt", obs="pixel")
    argv = ["--teacher_model_path", str(teacher), "--source_dir", str(synthetic / "src"), "--student_dir",
            str(synthetic / "student"), "--out", str(tmp_path / "o")]
    assert ood_detection.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on 'pixel' observations" in err[0], err


def test_missing_teacher_file(synthetic, tmp_path, capsys):
    argv = ["--teacher_model_path", str(tmp_path / "none.pt"), "--source_dir", str(synthetic / "src"),
            "--student_dir", str(synthetic / "student"), "--out", str(tmp_path / "o")]
    assert ood_detection.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint not found" in err[0], err


@pytest.mark.slow
def test_pipeline_collect_pretrain_detect(tmp_path):
    """Tiny collected state data -> a teacher pretrained for a few updates -> the OOD command line."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    tasks = ["metaworld_reach", "metaworld_drawer_close"]
    common = ["--configs", "defaults", "metaworld", "debug", "--obs", "state", "--time_limit", "40"]
    python = sys.executable

    def call(*args):
        result = subprocess.run([python, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    data = tmp_path / "data"
    # one collection run; door_open plays the student's (unseen) task
    call("collect_data.py", "--tasks", ",".join(tasks + ["metaworld_door_open"]), "--episodes", "5", "--obs", "state",
         "--noise", "0.1", "--random_frac", "0.1", "--workers", "1", "--out", str(data), "--seed", "0",
         "--progress", "False", "--time_limit", "40")
    dirs = [str(data / short_name(t)) for t in tasks]
    call("dreamer_pretrain.py", *common, "--source_tasks", ",".join(tasks), "--source_task_dirs", ",".join(dirs),
         "--pretrain_iterations", "2", "--logdir", str(tmp_path / "teacher"), "--progress", "False")
    out = tmp_path / "ood"
    result = call("ood_detection.py", *common, "--teacher_model_path", str(tmp_path / "teacher" / "teacher.pt"),
                  "--source_dir", ",".join(dirs), "--student_dir", str(data / "door_open"),
                  "--out", str(out), "--ood_bins", "2")
    assert "OOD rate" in result.stdout
    for name in OUTPUTS + ["ood_bins.png"]:
        assert (out / name).is_file(), f"missing output {name}"
    report = json.loads((out / "ood_report.json").read_text())
    assert report["tasks"] == tasks and report["student"]["n"] == 5
    assert report["in_distribution"]["source"] == "calibration split"
    for task in tasks:
        assert not set(report["split"][task]["fit"]) & set(report["split"][task]["calib"])
