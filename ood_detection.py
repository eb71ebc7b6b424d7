"""Stage 3: how far do the student's episodes lie from the teacher's source tasks?

Embeds episodes with the frozen teacher (posterior means under each task view, averaged over time),
fits one shrinkage Gaussian per source task on a fit split, calibrates the threshold on a disjoint
calibration split, and scores the student's episodes. Writes ood_report.json, ood_episodes.csv,
PNG plots and TensorBoard summaries to --out.

  python ood_detection.py --configs defaults --teacher_model_path runs/teacher/teacher.pt \
      --source_dir data/src --student_dir runs/student/train_eps [--id_dir data/heldout] \
      --out runs/ood [--ood_bins 5]
"""
from __future__ import annotations

import logging
import pathlib
import sys
import time
from typing import Sequence

import numpy as np

import tools
from ood import report as report_io
from ood import stats, summary
from ood.detector import SCORES, Detector
from ood.embed import Embeddings, embed_files, require_obs_keys
from ood.sources import (OODInputError, episode_files, resolve_task_dirs, select_tasks, split_fit_calib,
                         split_list, student_files)

SUCCESS_RULE = "any step: success[t] > 0 for some t in [0, L)"
EMBEDDING = "teacher posterior mean feature [z, h] under task view k, averaged over steps t >= 1"


def load_teacher(path: str, device):
    """The frozen teacher (eval mode, no gradients) and its metadata (source_tasks, config, encoder mode)."""
    from models import load_teacher as _load

    teacher, meta = _load(path, device)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher, meta


def _check_settings(config) -> None:
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


def _embed(teacher, files, views, obs_mode, config, what: str, need: int = 1) -> Embeddings:
    emb = embed_files(teacher, files, views, obs_mode, batch_size=int(config.ood_batch))
    if len(emb.info) < need:
        raise OODInputError(f"{what}: {len(emb.info)} readable episodes of {len(files)} files, need at least {need}")
    return emb


def run(config) -> dict:
    """Run the whole detection and write every output; returns the report dict."""
    _check_settings(config)
    tools.set_seed(int(config.seed))
    device = tools.get_device(config.device)
    if int(config.ood_threads) > 0:
        import torch

        torch.set_num_threads(int(config.ood_threads))
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tools.save_config(config, out)
    start = time.time()

    teacher, meta = load_teacher(config.teacher_model_path, device)
    teacher_tasks = list(meta["source_tasks"])
    obs_mode = meta["config"]["obs"]
    views = select_tasks(teacher_tasks, list(config.source_tasks))
    tasks = [teacher_tasks[v] for v in views]

    # --- inputs and the disjoint fit / calibration split ----------------------------------------
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
    students = student_files(config.student_dir)
    _check_obs(students, obs_mode, "--student_dir")
    id_files = None
    if config.id_dir:
        id_dirs = resolve_task_dirs(config.id_dir, tasks, "--id_dir")
        id_files = [episode_files(d, f"--id_dir ({t})") for t, d in zip(tasks, id_dirs)]
        fit_set = {p.resolve() for s in split.values() for p in s["fit"]}
        for task, files in zip(tasks, id_files):
            _check_obs(files, obs_mode, f"--id_dir ({task})")
            shared = [p for p in files if p.resolve() in fit_set]
            if shared:
                raise OODInputError(f"--id_dir ({task}): {len(shared)} episodes are also in the fit split "
                                    f"(e.g. {shared[0]}); held-out episodes must be disjoint from it")

    # --- embeddings ----------------------------------------------------------------------------
    fit_emb = [_embed(teacher, split[t]["fit"], views, obs_mode, config, f"{t} fit split", need=2) for t in tasks]
    calib_emb = [_embed(teacher, split[t]["calib"], views, obs_mode, config, f"{t} calibration split") for t in tasks]
    student_emb = _embed(teacher, students, views, obs_mode, config, "--student_dir")
    id_emb = None
    if id_files is not None:
        id_emb = [_embed(teacher, f, views, obs_mode, config, f"{t} --id_dir") for t, f in zip(tasks, id_files)]
    embed_seconds = time.time() - start

    # --- fit, calibrate, score -----------------------------------------------------------------
    detector = Detector.fit([e.values for e in fit_emb], config.shrinkage)
    calib_values = np.concatenate([e.values for e in calib_emb])            # (M, K, F)
    calib_labels = np.concatenate([np.full(len(e.info), k) for k, e in enumerate(calib_emb)])
    calib_scores = detector.score(calib_values)
    thresholds = detector.calibrate(calib_scores, float(config.threshold_quantile))
    calib_flags = detector.flags(calib_scores)
    student_scores = detector.score(student_emb.values)
    student_flags = detector.flags(student_scores)
    if id_emb is not None:
        id_values = np.concatenate([e.values for e in id_emb])
        id_labels = np.concatenate([np.full(len(e.info), k) for k, e in enumerate(id_emb)])
        id_scores = detector.score(id_values)
        id_flags = detector.flags(id_scores)
        id_source = "--id_dir"
    else:
        # Without separate held-out episodes the calibration split is the only in-distribution set:
        # its flag rate is the nominal rate by construction, so this is a self-check only.
        id_labels, id_scores, id_flags, id_source = calib_labels, calib_scores, calib_flags, "calibration split"

    flag_score = config.ood_score
    success_any = np.array([i.success_any for i in student_emb.info])
    success_last = np.array([i.success_last for i in student_emb.info])
    bins = summary.bin_index(len(student_emb.info), int(config.ood_bins))
    frechet, frechet_ref = {}, {}
    for k, task in enumerate(tasks):
        ref = fit_emb[k].values[:, k]
        frechet[task] = (stats.frechet_distance(student_emb.values[:, k], ref)
                         if len(student_emb.info) >= 2 else None)
        frechet_ref[task] = (stats.frechet_distance(calib_emb[k].values[:, k], ref)
                             if len(calib_emb[k].info) >= 2 else None)

    # --- report --------------------------------------------------------------------------------
    report = {
        "teacher": {"path": str(config.teacher_model_path), "source_tasks": teacher_tasks, "obs": obs_mode,
                    "encoder_mode": meta.get("encoder_mode")},
        "tasks": tasks,
        "task_views": views,
        "settings": {
            "score": flag_score, "shrinkage": config.shrinkage, "threshold_quantile": float(config.threshold_quantile),
            "fit_fraction": float(config.ood_fit_fraction), "calib_fraction": float(config.ood_calib_fraction),
            "seed": int(config.seed), "mixture_weights": "uniform", "embedding": EMBEDDING,
            "flag_rule": "score > threshold", "target_tpr": summary.TARGET_TPR, "bins": int(config.ood_bins),
        },
        "split": {t: {"dir": s["dir"], "fit": [p.name for p in s["fit"]], "calib": [p.name for p in s["calib"]]}
                  for t, s in split.items()},
        "fit": {t: {"n": g.n, "shrinkage": g.shrinkage} for t, g in zip(tasks, detector.gaussians)},
        "thresholds": thresholds,
        "calibration": summary.id_summary(calib_scores, calib_flags, calib_labels, tasks, flag_score),
        "in_distribution": {"source": id_source,
                            **summary.id_summary(id_scores, id_flags, id_labels, tasks, flag_score)},
        "detection": {"negatives": id_source, **summary.detection(id_scores, student_scores)},
        "student": {
            "dirs": split_list(config.student_dir),
            "n": len(student_emb.info),
            "ood_rate": summary.rate(student_flags[flag_score]),
            "ood_rate_by_score": {s: summary.rate(student_flags[s]) for s in SCORES},
            "mean_score": {s: summary.mean(student_scores[s]) for s in SCORES},
            "closest_task_histogram": summary.closest_histogram(student_scores["closest"], tasks),
            "frechet": frechet,
            "success_rule": SUCCESS_RULE,
            "success_rate": summary.rate(success_any),
            "success_rate_last_step": summary.rate(success_last),
        },
        "frechet_calib_vs_fit": frechet_ref,
        "bins": summary.bins_summary(bins, int(config.ood_bins), student_scores, student_flags, success_any, tasks,
                                     flag_score),
        "skipped_files": sorted(f for e in [*fit_emb, *calib_emb, student_emb, *(id_emb or [])] for f in e.skipped),
    }
    if id_emb is not None:
        report["split"]["id"] = {t: [pathlib.Path(i.file).name for i in e.info] for t, e in zip(tasks, id_emb)}

    rows = []
    for m, info in enumerate(student_emb.info):
        row = {"file": info.file, "score_min": float(student_scores["min"][m]),
               "score_mixture": float(student_scores["mixture"][m]),
               "closest_task": tasks[int(student_scores["closest"][m])], "ood": int(student_flags[flag_score][m]),
               "ood_min": int(student_flags["min"][m]), "ood_mixture": int(student_flags["mixture"][m]),
               "success": int(info.success_any), "success_last": int(info.success_last), "length": info.length,
               "bin": int(bins[m])}
        row.update({f"d_{t}": float(student_scores["d"][m, k]) for k, t in enumerate(tasks)})
        rows.append(row)

    report_io.write_json(report, out)
    report_io.write_csv(rows, out)
    np.savez_compressed(
        out / "ood_embeddings.npz", tasks=np.array(tasks), student=student_emb.values.astype(np.float32),
        calib=calib_values.astype(np.float32), calib_labels=calib_labels,
        **{f"fit_{k}": e.values.astype(np.float32) for k, e in enumerate(fit_emb)},
        **({"id": id_values.astype(np.float32), "id_labels": id_labels} if id_emb is not None else {}))
    id_label = "held-out source" if id_emb is not None else "calibration"
    files = report_io.PLOT_FILES
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
        images["ood_bins"] = report_io.plot_bins(report["bins"], flag_score, out / files["ood_bins"])
    report_io.write_tensorboard(out, report, images)
    for line in report_io.summary_lines(report):
        print(line)
    print(f"  wrote {out}/{report_io.REPORT_FILE}, {report_io.EPISODES_FILE}, {len(images)} plots "
          f"(embedding {embed_seconds:.1f}s, total {time.time() - start:.1f}s)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input ends with one error line and exit status 2."""
    import checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = tools.load_config(argv, description=__doc__.splitlines()[0])
        run(config)
    except (OODInputError, tools.ConfigError, checkpoint.CheckpointError) as err:
        print(f"ood_detection: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
