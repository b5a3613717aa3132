"""Reliability metrics (spec §5): pure numpy functions, float64 sums, one-line errors.

Metric functions take `(y_true, y_proba | y_score, *, options)` and return a Python float;
options are keyword-only. Importing this package imports numpy only (no TensorFlow, no
JAX). Submodules: classification, selective, ensemble, ood, label_uncertainty,
subpopulation, bootstrap, predictions (file format v1), scoreset (`plexbench score`),
vocabulary (every metric's declared facts: direction, category, range, normalisations).
"""

from plexbench.metrics._checks import UndefinedMetricWarning
from plexbench.metrics.bootstrap import bootstrap_ci
from plexbench.metrics.classification import (
    accuracy,
    adaptive_ece,
    brier,
    calib_auc,
    classwise_ece,
    ece,
    nll,
    reliability_diagram,
    rms_calibration_error,
)
from plexbench.metrics.vocabulary import direction, metric_info
from plexbench.metrics.ensemble import disagreement, ensemble_log_probs, mean_pairwise_kl
from plexbench.metrics.label_uncertainty import ged, soft_cross_entropy
from plexbench.metrics.ood import (
    MahalanobisScorer,
    auprc,
    auroc,
    entropy_score,
    fpr_at_95_tpr,
    mlogit_score,
    msp_score,
    ood_metrics,
)
from plexbench.metrics.predictions import Predictions, load_prediction_file, save_prediction_file
from plexbench.metrics.selective import aurc, eaurc, oracle_collaborative_accuracy, risk_coverage_curve
from plexbench.metrics.subpopulation import group_accuracies, subpopulation_summary

__all__ = [
    "MahalanobisScorer",
    "Predictions",
    "UndefinedMetricWarning",
    "accuracy",
    "adaptive_ece",
    "auprc",
    "aurc",
    "auroc",
    "bootstrap_ci",
    "brier",
    "calib_auc",
    "classwise_ece",
    "direction",
    "metric_info",
    "disagreement",
    "eaurc",
    "ece",
    "ensemble_log_probs",
    "entropy_score",
    "fpr_at_95_tpr",
    "ged",
    "group_accuracies",
    "load_prediction_file",
    "mean_pairwise_kl",
    "mlogit_score",
    "msp_score",
    "nll",
    "ood_metrics",
    "oracle_collaborative_accuracy",
    "reliability_diagram",
    "risk_coverage_curve",
    "rms_calibration_error",
    "save_prediction_file",
    "soft_cross_entropy",
    "subpopulation_summary",
]
