"""Writes the OOD results: `ood_report.json`, `ood_episodes.csv`, PNG plots, TensorBoard scalars and
images, and the short stdout summary.

Legend: M episodes, K source tasks.
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Sequence

import numpy as np

from envs.tasks import short_name
from tools import atomic_write

from . import stats
from .detector import SCORES

REPORT_FILE = "ood_report.json"
EPISODES_FILE = "ood_episodes.csv"
PLOT_FILES = {
    "score_hist_min": "score_hist_min.png",
    "score_hist_mixture": "score_hist_mixture.png",
    "roc": "roc.png",
    "distance_per_task": "distance_per_task.png",
    "ood_bins": "ood_bins.png",
}


def to_json(value):
    """numpy scalars/arrays -> builtins; non-finite floats -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def write_json(report: dict, out: pathlib.Path) -> pathlib.Path:
    """Write the aggregate report (temp file + rename)."""
    text = (json.dumps(to_json(report), indent=2) + "\n").encode()
    return atomic_write(out / REPORT_FILE, lambda f: f.write(text))


def write_csv(rows: Sequence[dict], out: pathlib.Path) -> pathlib.Path:
    """Write one row per student episode; floats with full precision so the file round-trips."""
    assert rows, "no student episodes to write"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    data = text.getvalue().encode()
    return atomic_write(out / EPISODES_FILE, lambda f: f.write(data))


# --- plots ---------------------------------------------------------------------------------------

def _figure(width: float = 6.0, height: float = 4.0, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def _save(fig, path: pathlib.Path) -> np.ndarray:
    """Save the figure as PNG (atomically) and return it as uint8 (H, W, 3) for TensorBoard."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write(path, lambda f: f.write(png.getvalue()))
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3)
    plt.close(fig)
    return rgb


def plot_score_hist(name: str, id_scores: np.ndarray, student_scores: np.ndarray, thr: float,
                    id_label: str, path: pathlib.Path) -> np.ndarray:
    """Histogram of one score for in-distribution vs student episodes, with the threshold.
    Log-spaced bins: Mahalanobis scores of OOD episodes are often orders of magnitude larger."""
    fig, ax = _figure()
    both = np.concatenate([id_scores, student_scores, [thr]])
    lo = max(float(np.min(both[both > 0])) if (both > 0).any() else 1e-3, 1e-6)
    hi = max(float(np.max(both)), lo * 10)
    edges = np.logspace(np.log10(lo) - 0.05, np.log10(hi) + 0.05, 40)
    clip = lambda x: np.clip(x, edges[0], edges[-1])  # noqa: E731
    ax.hist(clip(id_scores), bins=edges, alpha=0.6, label=f"{id_label} (n={len(id_scores)})")
    ax.hist(clip(student_scores), bins=edges, alpha=0.6, label=f"student (n={len(student_scores)})")
    ax.axvline(thr, color="k", linestyle="--", label="threshold")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
    ax.set_xlabel(f"{name} score")
    ax.set_ylabel("episodes")
    ax.legend()
    ax.set_title(f"OOD score '{name}'")
    return _save(fig, path)


def plot_roc(id_scores: dict, student_scores: dict, metrics: dict, id_label: str,
             path: pathlib.Path) -> np.ndarray:
    """ROC curves of both scores (negatives: in-distribution, positives: student)."""
    fig, ax = _figure(5.0, 5.0)
    # The scores often rank episodes alike and their curves coincide: a wide pale line under a narrow
    # dashed one with markers keeps both visible.
    styles = [dict(linewidth=5, alpha=0.45, zorder=2), dict(linewidth=1.8, linestyle="--", marker="o",
                                                            markersize=3, zorder=3)]
    for name, style in zip(SCORES, styles):
        fpr, tpr, _ = stats.roc_curve(id_scores[name], student_scores[name])
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{name} (AUROC {metrics[name]['auroc']:.3f})", **style)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel(f"false-positive rate ({id_label})")
    ax.set_ylabel("true-positive rate (student)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    ax.set_title("ROC")
    return _save(fig, path)


def plot_distances(tasks: Sequence[str], frechet: dict, reference: dict, student_d: np.ndarray,
                   id_d: np.ndarray, id_labels: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """Per source task k: Fréchet distance of the student's embeddings to task k's fit episodes (and
    of task k's calibration episodes, for scale), and the median squared Mahalanobis distance d_k of
    the student's episodes next to that of in-distribution episodes of task k itself."""
    return _save(distance_figure(tasks, frechet, reference, student_d, id_d, id_labels), path)


def distance_figure(tasks: Sequence[str], frechet: dict, reference: dict, student_d: np.ndarray,
                    id_d: np.ndarray, id_labels: np.ndarray):
    """The figure of `plot_distances` (two axes of bars, legends above the tallest bar)."""
    fig, axes = _figure(10.0, 4.0, ncols=2)
    x = np.arange(len(tasks))
    labels = [short_name(t) for t in tasks]
    axes[0].bar(x - 0.2, [frechet[t] or 0.0 for t in tasks], 0.4, label="student vs task")
    axes[0].bar(x + 0.2, [reference[t] or 0.0 for t in tasks], 0.4, label="calibration episodes of the task vs task")
    axes[0].set_ylabel("Fréchet distance")
    axes[1].bar(x - 0.2, np.median(student_d, axis=0) if len(student_d) else np.zeros(len(tasks)), 0.4,
                label="student")
    own = [np.median(id_d[id_labels == k, k]) if np.any(id_labels == k) else 0.0 for k in range(len(tasks))]
    axes[1].bar(x + 0.2, own, 0.4, label="held-out episodes of the task")
    axes[1].set_ylabel("median squared Mahalanobis d_k")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=30, ha="right")
        heights = [p.get_height() for p in ax.patches]
        positive = [h for h in heights if h > 0]
        if positive:  # log scale needs a positive bar (Fréchet is n/a below 2 episodes)
            ax.set_yscale("log")
            low, high = min(positive), max(positive)
            # Headroom above the tallest bar (half the shown range again) so the legend covers no bar.
            ax.set_ylim(low / 2, high * max(high / low, 10.0) ** 0.6)
        ax.legend(loc="upper left", fontsize="small")
    axes[0].set_title("distribution distance per source task")
    axes[1].set_title("distance to each task's Gaussian")
    return fig


def plot_bins(bins: list[dict], flag_score: str, path: pathlib.Path) -> np.ndarray:
    """OOD rate and success rate per training-phase bin."""
    fig, ax = _figure()
    x = [b["bin"] for b in bins]
    ax.plot(x, [np.nan if b["ood_rate"] is None else b["ood_rate"] for b in bins], "o-",
            label=f"OOD rate ({flag_score})")
    ax.plot(x, [np.nan if b["success_rate"] is None else b["success_rate"] for b in bins], "s--",
            label="success rate (any step)")
    ax.set_xlabel("training-phase bin (episode order)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("OOD rate over training")
    return _save(fig, path)


# --- TensorBoard ---------------------------------------------------------------------------------

def write_tensorboard(out: pathlib.Path, report: dict, images: dict[str, np.ndarray], wandb: dict | None = None) -> None:
    """Aggregate scalars and the plots at step 0; per-bin scalars with the bin as the step (W&B too when
    `wandb` holds its settings)."""
    from tools import Logger

    logger = Logger(out, wandb=wandb)
    try:
        student = report["student"]
        logger.scalar("ood/student_ood_rate", student["ood_rate"])
        for name in SCORES:
            logger.scalar(f"ood/student_ood_rate_{name}", student["ood_rate_by_score"][name])
            logger.scalar(f"ood/student_mean_score_{name}", student["mean_score"][name])
            logger.scalar(f"ood/threshold_{name}", report["thresholds"][name])
            for key in ("auroc", "fpr_at_95tpr"):
                value = report["detection"][name][key]
                if value is not None:
                    logger.scalar(f"ood/{key}_{name}", value)
        logger.scalar("ood/id_flag_rate", report["in_distribution"]["flag_rate"])
        acc = report["in_distribution"]["closest_task_accuracy"]["overall"]
        if acc is not None:
            logger.scalar("ood/id_closest_task_accuracy", acc)
        for task, value in student["frechet"].items():
            if value is not None:
                logger.scalar(f"ood/frechet/{task}", value)
        for task, count in student["closest_task_histogram"].items():
            logger.scalar(f"ood/closest_task/{task}", count / max(student["n"], 1))
        for name, image in images.items():
            logger.image(f"ood/{name}", image)
        logger.write(0)
        for b in report.get("bins", []):
            if b["n"] == 0:
                continue
            logger.scalar("ood_bins/ood_rate", b["ood_rate"])
            for name in SCORES:
                logger.scalar(f"ood_bins/mean_score_{name}", b["mean_score"][name])
            logger.scalar("ood_bins/success_rate", b["success_rate"])
            logger.write(b["bin"])
    finally:
        logger.close()


# --- stdout --------------------------------------------------------------------------------------

def summary_lines(report: dict) -> list[str]:
    """A few human-readable lines with the headline numbers."""
    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def num(value, fmt=".3f"):
        return "n/a" if value is None else format(value, fmt)

    s, ind, det = report["student"], report["in_distribution"], report["detection"]
    flag = report["settings"]["score"]
    hist = ", ".join(f"{short_name(t)} {c}" for t, c in s["closest_task_histogram"].items())
    lines = [
        f"OOD detection: teacher {report['teacher']['path']} ({len(report['tasks'])} source tasks), "
        f"{s['n']} student episodes",
        f"  student OOD rate ({flag} score, q={report['settings']['threshold_quantile']}): {pct(s['ood_rate'])}"
        f"   [min {pct(s['ood_rate_by_score']['min'])}, mixture {pct(s['ood_rate_by_score']['mixture'])}]",
        f"  in-distribution ({ind['source']}, n={ind['n']}): flag rate {pct(ind['flag_rate'])}, "
        f"closest-task accuracy {pct(ind['closest_task_accuracy']['overall'])}",
        f"  AUROC min {num(det['min']['auroc'])}, mixture {num(det['mixture']['auroc'])};  "
        f"FPR@95%TPR min {num(det['min']['fpr_at_95tpr'])}, mixture {num(det['mixture']['fpr_at_95tpr'])}",
        f"  closest task of student episodes: {hist}",
        "  Fréchet distance student vs task: " + ", ".join(
            f"{short_name(t)} {num(v, '.3g')}" for t, v in s["frechet"].items())
        + "  (the task's calibration episodes: " + ", ".join(
            f"{num(v, '.3g')}" for v in report["frechet_calib_vs_fit"].values()) + ")",
        f"  student success ({s['success_rule']}): {pct(s['success_rate'])}",
    ]
    lines += [f"  student episodes: {note}" for note in s.get("selection", [])]
    note = closest_vs_frechet_note(s)
    if note:
        lines.append(note)
    for b in report.get("bins", []):
        lines.append(f"  bin {b['bin']} (n={b['n']}): OOD rate {pct(b['ood_rate'])}, "
                     f"mean {flag} score {num(b['mean_score'][flag], '.3g')}, success {pct(b['success_rate'])}")
    return lines


def closest_vs_frechet_note(student: dict) -> str | None:
    """One line explaining why the closest task and the smallest Fréchet distance name different tasks,
    when they do: they measure different things."""
    hist = student["closest_task_histogram"]
    frechet = {t: v for t, v in student["frechet"].items() if v is not None}
    if not hist or not frechet or not sum(hist.values()):
        return None
    by_episode, by_set = max(hist, key=hist.get), min(frechet, key=frechet.get)
    if by_episode == by_set:
        return None
    return (f"  note: most episodes lie closest to {short_name(by_episode)} (each episode's own distance to each task's "
            f"Gaussian), while the set as a whole is nearest to {short_name(by_set)} (Fréchet compares the set's mean "
            f"and spread with the task's); both are right, they answer different questions")