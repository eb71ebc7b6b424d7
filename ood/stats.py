"""Numerical core of OOD detection: shrinkage Gaussians, Mahalanobis and mixture scores, Fréchet
distance, ROC metrics. Pure numpy/scipy so it can be tested without a model.

Legend: M episodes (rows), K source tasks, F feature size, Mp positives, Mn negatives.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import logsumexp
from scipy.stats import rankdata

SHRINKAGE_METHODS = ("ledoit_wolf", "oas")


# --- shrinkage covariance ------------------------------------------------------------------------

def _centered(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 2, f"expected samples as (M, F), got shape {x.shape}"
    assert x.shape[0] >= 2, f"need at least 2 samples to estimate a covariance, got {x.shape[0]}"
    assert np.isfinite(x).all(), "samples contain NaN or inf"
    mean = x.mean(axis=0)  # (F,)
    return x - mean, mean


def ledoit_wolf_shrinkage(xc: np.ndarray) -> float:
    """Ledoit–Wolf (2004) optimal intensity for shrinking the ML covariance of centred rows `xc`
    (M, F) towards a scaled identity; in [0, 1]."""
    m, f = xc.shape
    s = xc.T @ xc / m  # (F, F) maximum-likelihood covariance
    mu = np.trace(s) / f
    # d2: squared distance of S from the target; b2: estimated variance of S around the truth,
    # using sum_i ||x_i x_i^T - S||_F^2 = sum_i ||x_i||^4 - M ||S||_F^2.
    s_fro2 = float(np.sum(s * s))
    d2 = (s_fro2 - 2.0 * mu * np.trace(s) + f * mu * mu) / f
    row_norm4 = float(np.sum(np.sum(xc * xc, axis=1) ** 2))
    b2 = (row_norm4 / m - s_fro2) / (m * f)
    if d2 <= 0.0:
        # S is already a multiple of the identity: shrinking changes nothing.
        return 0.0
    return float(np.clip(min(b2, d2) / d2, 0.0, 1.0))


def oas_shrinkage(xc: np.ndarray) -> float:
    """Oracle Approximating Shrinkage intensity (Chen et al. 2010, eq. 23) for centred rows `xc`
    (M, F); in [0, 1]. The 2/F terms of eq. 23 are kept (some libraries drop them), so values differ
    slightly from such implementations when F is small."""
    m, f = xc.shape
    s = xc.T @ xc / m  # (F, F)
    tr_s = float(np.trace(s))
    tr_s2 = float(np.sum(s * s))
    num = (1.0 - 2.0 / f) * tr_s2 + tr_s * tr_s
    den = (m + 1.0 - 2.0 / f) * (tr_s2 - tr_s * tr_s / f)
    if den <= 0.0:
        return 1.0
    return float(np.clip(num / den, 0.0, 1.0))


def shrunk_covariance(x: np.ndarray, method: str = "ledoit_wolf") -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (F,), shrinkage covariance (F, F) and shrinkage intensity of samples `x` (M, F).

    Shrinkage keeps the covariance well conditioned when M is not much larger than F, which is
    the normal case for per-task episode embeddings."""
    xc, mean = _centered(x)
    m, f = xc.shape
    if method == "ledoit_wolf":
        rho = ledoit_wolf_shrinkage(xc)
    elif method == "oas":
        rho = oas_shrinkage(xc)
    else:
        raise ValueError(f"unknown shrinkage '{method}'; use one of {SHRINKAGE_METHODS}")
    s = xc.T @ xc / m  # (F, F)
    mu = np.trace(s) / f
    cov = (1.0 - rho) * s + rho * mu * np.eye(f)
    return mean, cov, rho


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """A fitted Gaussian: mean (F,), covariance (F, F), its inverse, and how it was fitted."""

    mean: np.ndarray
    cov: np.ndarray
    precision: np.ndarray
    shrinkage: float
    n: int


def fit_gaussian(x: np.ndarray, method: str = "ledoit_wolf") -> Gaussian:
    """Fit a shrinkage Gaussian to samples `x` (M, F)."""
    mean, cov, rho = shrunk_covariance(x, method)
    # A zero-variance feature with zero shrinkage would make cov singular; a tiny ridge relative to
    # the average variance keeps the inverse finite without changing well-posed cases measurably.
    ridge = 1e-10 * max(float(np.trace(cov)) / cov.shape[0], 1e-300)
    precision = np.linalg.inv(cov + ridge * np.eye(cov.shape[0]))
    precision = 0.5 * (precision + precision.T)
    return Gaussian(mean=mean, cov=cov, precision=precision, shrinkage=rho, n=int(np.shape(x)[0]))


def mahalanobis_sq(x: np.ndarray, g: Gaussian) -> np.ndarray:
    """Squared Mahalanobis distance (M,) of rows `x` (M, F) to the Gaussian `g`."""
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 2 and x.shape[1] == g.mean.shape[0], (
        f"expected (M, {g.mean.shape[0]}) rows, got shape {x.shape}")
    diff = x - g.mean  # (M, F)
    d = np.einsum("mf,fg,mg->m", diff, g.precision, diff)
    # Round-off can push a distance of ~0 slightly negative.
    return np.maximum(d, 0.0)


# --- scores --------------------------------------------------------------------------------------

def min_score(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`min` score (M,) = min_k d_k and the closest task (M,) = argmin_k d_k, from distances d (M, K)."""
    d = np.asarray(d, dtype=np.float64)
    assert d.ndim == 2 and d.shape[1] >= 1, f"expected distances (M, K), got shape {d.shape}"
    return d.min(axis=1), d.argmin(axis=1)


def mixture_score(d: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """`mixture` score (M,) = -log sum_k pi_k exp(-d_k / 2), computed with logsumexp so large
    distances do not underflow to -log 0. `weights` (K,) default to uniform."""
    d = np.asarray(d, dtype=np.float64)
    assert d.ndim == 2, f"expected distances (M, K), got shape {d.shape}"
    k = d.shape[1]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    assert w.shape == (k,) and (w > 0).all(), f"mixture weights must be ({k},) and positive, got {w}"
    w = w / w.sum()
    return -logsumexp(np.log(w)[None, :] - 0.5 * d, axis=1)


def threshold(scores: np.ndarray, quantile: float) -> float:
    """Score threshold: the `quantile` of calibration scores; an episode is flagged when its score
    is strictly above it."""
    scores = np.asarray(scores, dtype=np.float64)
    assert scores.size > 0, "no calibration scores to take a threshold from"
    assert 0.0 < quantile < 1.0, f"threshold quantile must lie in (0, 1), got {quantile}"
    return float(np.quantile(scores, quantile))


# --- distribution distance -----------------------------------------------------------------------

def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(0.5 * (a + a.T))
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (sample mean and covariance) to rows `x` (M, F)
    and `y` (M', F): ||mu_x - mu_y||^2 + tr(Cx + Cy - 2 (Cx Cy)^(1/2)).

    tr((Cx Cy)^(1/2)) is computed from the eigenvalues of the symmetric PSD matrix
    Cx^(1/2) Cy Cx^(1/2), which has the same spectrum; unlike a general matrix square root this
    stays real and stable when the covariances are rank deficient (fewer episodes than features).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    assert x.ndim == 2 and y.ndim == 2 and x.shape[1] == y.shape[1], (
        f"expected (M, F) and (M', F) rows, got {x.shape} and {y.shape}")
    assert len(x) >= 2 and len(y) >= 2, f"need at least 2 rows on each side, got {len(x)} and {len(y)}"
    mx, my = x.mean(axis=0), y.mean(axis=0)
    cx = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    cy = np.cov(y, rowvar=False).reshape(y.shape[1], y.shape[1])
    sx = _psd_sqrt(cx)
    inner = sx @ cy @ sx
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    dist = float(np.sum((mx - my) ** 2) + np.trace(cx) + np.trace(cy) - 2.0 * tr_sqrt)
    return max(dist, 0.0)


# --- detection metrics ---------------------------------------------------------------------------

def _check_scores(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neg = np.asarray(negatives, dtype=np.float64).ravel()  # (Mn,)
    pos = np.asarray(positives, dtype=np.float64).ravel()  # (Mp,)
    assert neg.size > 0 and pos.size > 0, f"need negatives and positives, got {neg.size} and {pos.size}"
    assert np.isfinite(neg).all() and np.isfinite(pos).all(), "scores contain NaN or inf"
    return neg, pos


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve for "higher score = positive": P(pos > neg) + P(pos = neg) / 2,
    from the Mann–Whitney rank sum (exact, ties counted half)."""
    neg, pos = _check_scores(negatives, positives)
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for "flag when score >= threshold": fpr, tpr and thresholds (descending), starting
    at (0, 0) with threshold +inf."""
    neg, pos = _check_scores(negatives, positives)
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    # count of scores >= t, for each threshold t, via binary search on the sorted scores
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def fpr_at_tpr(negatives: np.ndarray, positives: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is at least `tpr`
    (flag when score >= threshold)."""
    neg, pos = _check_scores(negatives, positives)
    assert 0.0 < tpr <= 1.0, f"target TPR must lie in (0, 1], got {tpr}"
    need = int(np.ceil(tpr * pos.size - 1e-9))  # positives that must be flagged
    thr = np.sort(pos)[::-1][max(need, 1) - 1]
    return float(np.mean(neg >= thr))
