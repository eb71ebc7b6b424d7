"""The OOD detection run (stage 3): inputs and the disjoint fit / calibration split, teacher embeddings,
per-task Gaussians, calibrated thresholds, scores, and every output file.

Legend: M episodes, K source tasks (views), F feature size.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Sequence

import numpy as np

import configs
from tools import SUCCESS_RULES, wandb_settings
import tools

from . import report as report_io
from . import stats, summary
from .detector import SCORES, Detector
from .embed import Embeddings, embed_files, require_obs_keys
from .sources import (OODInputError, episode_files, resolve_task_dirs, select_tasks, split_fit_calib, split_list,
                      student_files)

SUCCESS_RULE = SUCCESS_RULES["success_any"]
EMBEDDING = "teacher posterior mean feature [z, h] under task view k, averaged over steps t >= 1"


def frozen_teacher(path: str, device):
    """The teacher (eval mode, no gradients) and its metadata (source_tasks, config, encoder mode)."""
    from models import load_teacher

    teacher, meta = load_teacher(path, device)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher, meta


def check_settings(config) -> None:
    """One error line for every OOD setting that cannot be used."""
    if not config.teacher_model_path:
        raise OODInputError("--teacher_model_path is empty: give the teacher checkpoint (teacher.pt)")
    if not config.out:
        raise OODInputError("--out is empty: give a folder for the report")
    fit, calib = float(config.ood_fit_fraction), float(config.ood_calib_fraction)
    if not (fit > 0 and calib > 0 and fit + calib <= 1.0 + 1e-9):
        raise OODInputError(f"ood_fit_fraction ({fit}) and ood_calib_fraction ({calib}) must be > 0 and sum "
                            f"to at most 1 (the two splits are disjoint)")
    if not 0.0 < float(config.threshold_quantile) < 1.0:
        raise OODInputError(f"threshold_quantile must lie in (0, 1), got {config.threshold_quantile}")
    if config.shrinkage not in stats.SHRINKAGE_METHODS:
        raise OODInputError(f"shrinkage '{config.shrinkage}' unknown; use one of {list(stats.SHRINKAGE_METHODS)}")
    if config.ood_score not in SCORES:
        raise OODInputError(f"ood_score '{config.ood_score}' unknown; use one of {list(SCORES)}")
    if int(config.ood_bins) < 0 or int(config.ood_batch) < 1 or int(config.ood_threads) < 0:
        raise OODInputError(f"need ood_bins >= 0, ood_batch >= 1 and ood_threads >= 0, got {config.ood_bins}, "
                            f"{config.ood_batch} and {config.ood_threads}")


def _check_obs(files: Sequence[pathlib.Path], obs_mode: str, flag: str) -> None:
    """Fail fast on a dataset of the wrong observation type, reading only the first file's key list."""
    try:
        with np.load(files[0], allow_pickle=False) as data:
            have = set(data.files)
    except Exception:  # unreadable files are skipped (with a warning) when embedding
        return
    require_obs_keys(have, obs_mode, f"{flag}: {files[0].parent}")


# --- inputs -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Inputs:
    split: dict  # task -> {"dir", "fit", "calib"}
    students: list
    id_files: list | None  # per task, or None without --id_dir
    student_notes: list  # one line per student folder: how many prefill episodes were left out


def source_split(config, tasks: list[str], obs_mode: str) -> dict:
    """Each source task's episode files, split into disjoint fit and calibration sets."""
    dirs = resolve_task_dirs(config.source_dir, tasks, "--source_dir", fallback=config.source_task_dirs)
    split = {}
    for k, (task, directory) in enumerate(zip(tasks, dirs)):
        files = episode_files(directory, f"--source_dir ({task})")
        _check_obs(files, obs_mode, f"--source_dir ({task})")
        fit, calib = split_fit_calib(files, config.ood_fit_fraction, config.ood_calib_fraction, config.seed, k)
        if len(fit) < 2 or len(calib) < 1:
            raise OODInputError(f"--source_dir ({task}): {len(files)} episodes in {directory} give {len(fit)} fit and "
                                f"{len(calib)} calibration episodes; need at least 2 and 1")
        assert not set(fit) & set(calib), f"{task}: fit and calibration splits overlap"
        split[task] = {"dir": str(directory), "fit": fit, "calib": calib}
    return split


def held_out_files(config, tasks: list[str], obs_mode: str, split: dict) -> list | None:
    """Per task, the --id_dir episode files (None without --id_dir); they must not overlap the fit split."""
    if not config.id_dir:
        return None
    id_dirs = resolve_task_dirs(config.id_dir, tasks, "--id_dir")
    id_files = [episode_files(d, f"--id_dir ({t})") for t, d in zip(tasks, id_dirs)]
    fit_set = {p.resolve() for s in split.values() for p in s["fit"]}
    for task, files in zip(tasks, id_files):
        _check_obs(files, obs_mode, f"--id_dir ({task})")
        shared = [p for p in files if p.resolve() in fit_set]
        if shared:
            raise OODInputError(f"--id_dir ({task}): {len(shared)} episodes are also in the fit split "
                                f"(e.g. {shared[0]}); held-out episodes must be disjoint from it")
    return id_files


def gather_inputs(config, tasks: list[str], obs_mode: str) -> Inputs:
    split = source_split(config, tasks, obs_mode)
    notes: list[str] = []
    students = student_files(config.student_dir, skip_prefill=config.ood_skip_prefill, notes=notes)
    _check_obs(students, obs_mode, "--student_dir")
    return Inputs(split, students, held_out_files(config, tasks, obs_mode, split), notes)


# --- embeddings and scores ----------------------------------------------------------------------------

def _embed(teacher, files, views, obs_mode, config, what: str, need: int = 1) -> Embeddings:
    emb = embed_files(teacher, files, views, obs_mode, batch_size=int(config.ood_batch))
    if len(emb.info) < need:
        raise OODInputError(f"{what}: {len(emb.info)} readable episodes of {len(files)} files, need at least {need}")
    return emb


@dataclasses.dataclass
class Embedded:
    fit: list  # per task
    calib: list  # per task
    student: Embeddings
    held_out: list | None  # per task

    def all(self) -> list:
        return [*self.fit, *self.calib, self.student, *(self.held_out or [])]


def embed_inputs(teacher, inputs: Inputs, tasks, views, obs_mode, config) -> Embedded:
    split = inputs.split
    fit = [_embed(teacher, split[t]["fit"], views, obs_mode, config, f"{t} fit split", need=2) for t in tasks]
    calib = [_embed(teacher, split[t]["calib"], views, obs_mode, config, f"{t} calibration split") for t in tasks]
    student = _embed(teacher, inputs.students, views, obs_mode, config, "--student_dir")
    held_out = None
    if inputs.id_files is not None:
        held_out = [_embed(teacher, f, views, obs_mode, config, f"{t} --id_dir") for t, f in zip(tasks, inputs.id_files)]
    return Embedded(fit, calib, student, held_out)


def _stack(embeddings: list) -> tuple[np.ndarray, np.ndarray]:
    """Values (M, K, F) of several tasks' embeddings and each row's task label (M,)."""
    values = np.concatenate([e.values for e in embeddings])
    labels = np.concatenate([np.full(len(e.info), k) for k, e in enumerate(embeddings)])
    return values, labels


@dataclasses.dataclass
class Scored:
    detector: Detector
    thresholds: dict
    calib: tuple  # (values, labels, scores, flags)
    student: tuple  # (scores, flags)
    in_dist: tuple  # (values, labels, scores, flags, source name)


def fit_and_score(emb: Embedded, config) -> Scored:
    """Fit one Gaussian per task, calibrate thresholds on the calibration split, score everything."""
    detector = Detector.fit([e.values for e in emb.fit], config.shrinkage)
    calib_values, calib_labels = _stack(emb.calib)  # (M, K, F), (M,)
    calib_scores = detector.score(calib_values)
    thresholds = detector.calibrate(calib_scores, float(config.threshold_quantile))
    calib = (calib_values, calib_labels, calib_scores, detector.flags(calib_scores))
    student_scores = detector.score(emb.student.values)
    if emb.held_out is not None:
        id_values, id_labels = _stack(emb.held_out)
        id_scores = detector.score(id_values)
        in_dist = (id_values, id_labels, id_scores, detector.flags(id_scores), "--id_dir")
    else:
        # Without separate held-out episodes the calibration split is the only in-distribution set:
        # its flag rate is the nominal rate by construction, so this is a self-check only.
        in_dist = (*calib, "calibration split")
    return Scored(detector, thresholds, calib, (student_scores, detector.flags(student_scores)), in_dist)


def frechet_distances(emb: Embedded, tasks: list[str]) -> tuple[dict, dict]:
    """Per task: Fréchet distance of the student's and of the calibration embeddings to the fit embeddings."""
    frechet, reference = {}, {}
    for k, task in enumerate(tasks):
        ref = emb.fit[k].values[:, k]
        frechet[task] = stats.frechet_distance(emb.student.values[:, k], ref) if len(emb.student.info) >= 2 else None
        reference[task] = (stats.frechet_distance(emb.calib[k].values[:, k], ref)
                           if len(emb.calib[k].info) >= 2 else None)
    return frechet, reference


# --- report -------------------------------------------------------------------------------------------

def _student_section(config, emb: Embedded, scored: Scored, tasks, frechet, notes: list) -> dict:
    scores, flags = scored.student
    info = emb.student.info
    return {
        "dirs": split_list(config.student_dir),
        "prefill_left_out": bool(config.ood_skip_prefill),
        "selection": list(notes),
        "n": len(info),
        "ood_rate": summary.rate(flags[config.ood_score]),
        "ood_rate_by_score": {s: summary.rate(flags[s]) for s in SCORES},
        "mean_score": {s: summary.mean(scores[s]) for s in SCORES},
        "closest_task_histogram": summary.closest_histogram(scores["closest"], tasks),
        "frechet": frechet,
        "success_rule": SUCCESS_RULE,
        "success_rate": summary.rate(np.array([i.success_any for i in info])),
        "success_rate_last_step": summary.rate(np.array([i.success_final for i in info])),
    }


def build_report(config, meta: dict, tasks, views, inputs: Inputs, emb: Embedded, scored: Scored) -> dict:
    """The aggregate report written to ood_report.json."""
    flag_score, bins = config.ood_score, int(config.ood_bins)
    frechet, frechet_ref = frechet_distances(emb, tasks)
    _, calib_labels, calib_scores, calib_flags = scored.calib
    _, id_labels, id_scores, id_flags, id_source = scored.in_dist
    student_scores, student_flags = scored.student
    success = np.array([i.success_any for i in emb.student.info])
    report = {
        "teacher": {"path": str(config.teacher_model_path), "source_tasks": list(meta["source_tasks"]),
                    "obs": meta["config"]["obs"], "encoder_mode": meta.get("encoder_mode")},
        "tasks": tasks,
        "task_views": views,
        "settings": {
            "score": flag_score, "shrinkage": config.shrinkage, "threshold_quantile": float(config.threshold_quantile),
            "fit_fraction": float(config.ood_fit_fraction), "calib_fraction": float(config.ood_calib_fraction),
            "seed": int(config.seed), "mixture_weights": "uniform", "embedding": EMBEDDING,
            "flag_rule": "score > threshold", "target_tpr": summary.TARGET_TPR, "bins": bins,
        },
        "split": {t: {"dir": s["dir"], "fit": [p.name for p in s["fit"]], "calib": [p.name for p in s["calib"]]}
                  for t, s in inputs.split.items()},
        "fit": {t: {"n": g.n, "shrinkage": g.shrinkage} for t, g in zip(tasks, scored.detector.gaussians)},
        "thresholds": scored.thresholds,
        "calibration": summary.id_summary(calib_scores, calib_flags, calib_labels, tasks, flag_score),
        "in_distribution": {"source": id_source, **summary.id_summary(id_scores, id_flags, id_labels, tasks, flag_score)},
        "detection": {"negatives": id_source, **summary.detection(id_scores, student_scores)},
        "student": _student_section(config, emb, scored, tasks, frechet, inputs.student_notes),
        "frechet_calib_vs_fit": frechet_ref,
        "bins": summary.bins_summary(summary.bin_index(len(emb.student.info), bins), bins, student_scores,
                                     student_flags, success, tasks, flag_score),
        "skipped_files": sorted(f for e in emb.all() for f in e.skipped),
    }
    if emb.held_out is not None:
        report["split"]["id"] = {t: [pathlib.Path(i.file).name for i in e.info] for t, e in zip(tasks, emb.held_out)}
    return report


def episode_rows(config, emb: Embedded, scored: Scored, tasks) -> list[dict]:
    """One ood_episodes.csv row per student episode."""
    scores, flags = scored.student
    bins = summary.bin_index(len(emb.student.info), int(config.ood_bins))
    rows = []
    for m, info in enumerate(emb.student.info):
        row = {"file": info.file, "score_min": float(scores["min"][m]), "score_mixture": float(scores["mixture"][m]),
               "closest_task": tasks[int(scores["closest"][m])], "ood": int(flags[config.ood_score][m]),
               "ood_min": int(flags["min"][m]), "ood_mixture": int(flags["mixture"][m]),
               "success": int(info.success_any), "success_last": int(info.success_final), "length": info.length,
               "bin": int(bins[m])}
        row.update({f"d_{t}": float(scores["d"][m, k]) for k, t in enumerate(tasks)})
        rows.append(row)
    return rows


def write_embeddings(out: pathlib.Path, tasks, emb: Embedded, scored: Scored) -> None:
    calib_values, calib_labels = scored.calib[:2]
    held_out = {}
    if emb.held_out is not None:
        held_out = {"id": scored.in_dist[0].astype(np.float32), "id_labels": scored.in_dist[1]}
    np.savez_compressed(
        out / "ood_embeddings.npz", tasks=np.array(tasks), student=emb.student.values.astype(np.float32),
        calib=calib_values.astype(np.float32), calib_labels=calib_labels,
        **{f"fit_{k}": e.values.astype(np.float32) for k, e in enumerate(emb.fit)}, **held_out)


def write_plots(out: pathlib.Path, report: dict, tasks, emb: Embedded, scored: Scored) -> dict:
    """PNG plots; returns name -> image for TensorBoard."""
    _, id_labels, id_scores, _, _ = scored.in_dist
    student_scores, thresholds = scored.student[0], scored.thresholds
    id_label = "held-out source" if emb.held_out is not None else "calibration"
    files = report_io.PLOT_FILES
    frechet, frechet_ref = report["student"]["frechet"], report["frechet_calib_vs_fit"]
    images = {
        "score_hist_min": report_io.plot_score_hist("min", id_scores["min"], student_scores["min"], thresholds["min"],
                                                    id_label, out / files["score_hist_min"]),
        "score_hist_mixture": report_io.plot_score_hist("mixture", id_scores["mixture"], student_scores["mixture"],
                                                        thresholds["mixture"], id_label, out / files["score_hist_mixture"]),
        "roc": report_io.plot_roc(id_scores, student_scores, report["detection"], id_label, out / files["roc"]),
        "distance_per_task": report_io.plot_distances(tasks, frechet, frechet_ref, student_scores["d"], id_scores["d"],
                                                      id_labels, out / files["distance_per_task"]),
    }
    if report["bins"]:
        images["ood_bins"] = report_io.plot_bins(report["bins"], report["settings"]["score"], out / files["ood_bins"])
    return images


# --- the run ------------------------------------------------------------------------------------------

def run(config) -> dict:
    """Run the whole detection and write every output; returns the report dict."""
    check_settings(config)
    tools.set_seed(int(config.seed))
    device = tools.get_device(config.device)
    tools.set_threads(config.ood_threads)
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    configs.record_config(config, out)
    start = time.time()

    teacher, meta = frozen_teacher(config.teacher_model_path, device)
    obs_mode = meta["config"]["obs"]
    views = select_tasks(list(meta["source_tasks"]), list(config.source_tasks))
    tasks = [meta["source_tasks"][v] for v in views]
    inputs = gather_inputs(config, tasks, obs_mode)
    emb = embed_inputs(teacher, inputs, tasks, views, obs_mode, config)
    embed_seconds = time.time() - start
    scored = fit_and_score(emb, config)
    report = build_report(config, meta, tasks, views, inputs, emb, scored)

    report_io.write_json(report, out)
    report_io.write_csv(episode_rows(config, emb, scored, tasks), out)
    write_embeddings(out, tasks, emb, scored)
    images = write_plots(out, report, tasks, emb, scored)
    report_io.write_tensorboard(out, report, images, wandb=wandb_settings(config))
    for line in report_io.summary_lines(report):
        print(line)
    print(f"  wrote {out}/{report_io.REPORT_FILE}, {report_io.EPISODES_FILE}, {len(images)} plots "
          f"(embedding {embed_seconds:.1f}s, total {time.time() - start:.1f}s)")
    return report
