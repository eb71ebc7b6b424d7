"""OOD detection in the teacher's latent space: episode embeddings, per-task shrinkage Gaussians,
scores, calibration, metrics and the report."""
from .detector import SCORES, Detector
from .embed import Embeddings, EpisodeInfo, embed_files
from .sources import OODInputError
from .stats import (Gaussian, auroc, fit_gaussian, fpr_at_tpr, frechet_distance, mahalanobis_sq, min_score,
                    mixture_score, roc_curve, shrunk_covariance, threshold)

__all__ = ["SCORES", "Detector", "Embeddings", "EpisodeInfo", "Gaussian", "OODInputError", "auroc", "embed_files",
           "fit_gaussian", "fpr_at_tpr", "frechet_distance", "mahalanobis_sq", "min_score", "mixture_score",
           "roc_curve", "shrunk_covariance", "threshold"]
