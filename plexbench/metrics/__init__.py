"""Reliability metrics (spec §5): pure numpy functions, float64 sums, one-line errors.

Metric functions take `(y_true, y_proba | y_score, *, options)` and return a Python float;
options are keyword-only. Instead of the arrays they also take the checked container
`ExampleStats` (predictions validated once, with per-example statistics computed in one pass;
OOD metrics: `DetectionScores`), on which they are O(N). Importing this package imports numpy
only (no TensorFlow, no JAX). Submodules: stats (the container), classification, selective,
ensemble, ood, label_uncertainty, label_noise, subpopulation, bootstrap (one resampling policy),
predictions (file format v1), vocabulary (every metric's declared facts: direction, category,
range, normalisations).
"""

from plexbench.metrics._checks import UndefinedMetricWarning
from plexbench.metrics.bootstrap import bootstrap_ci, bootstrap_intervals
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
from plexbench.metrics.label_noise import (
    confident_joint,
    confident_thresholds,
    estimate_joint,
    estimated_noise_rate,
    find_label_issues,
    issue_f1,
    issue_precision,
    issue_recall,
    label_issue_auprc,
    label_issue_auroc,
    normalized_margin,
    self_confidence,
)
from plexbench.metrics.label_uncertainty import ged, soft_cross_entropy
from plexbench.metrics.ood import (
    DetectionScores,
    DetectionSet,
    MahalanobisScorer,
    auprc,
    auroc,
    entropy_score,
    fpr_at_95_tpr,
    mlogit_score,
    msp_score,
    ood_metrics,
)
from plexbench.metrics.predictions import (
    Predictions,
    PredictionStats,
    load_prediction_file,
    load_prediction_stats,
    save_prediction_file,
)
from plexbench.metrics.selective import aurc, eaurc, oracle_collaborative_accuracy, risk_coverage_curve
from plexbench.metrics.stats import NLL_CLIP, ExampleStats
from plexbench.metrics.subpopulation import group_accuracies, subpopulation_summary

__all__ = [
    "NLL_CLIP",
    "DetectionScores",
    "DetectionSet",
    "ExampleStats",
    "MahalanobisScorer",
    "PredictionStats",
    "Predictions",
    "UndefinedMetricWarning",
    "accuracy",
    "adaptive_ece",
    "auprc",
    "aurc",
    "auroc",
    "bootstrap_ci",
    "bootstrap_intervals",
    "brier",
    "calib_auc",
    "classwise_ece",
    "confident_joint",
    "confident_thresholds",
    "direction",
    "metric_info",
    "disagreement",
    "eaurc",
    "ece",
    "ensemble_log_probs",
    "entropy_score",
    "estimate_joint",
    "estimated_noise_rate",
    "find_label_issues",
    "fpr_at_95_tpr",
    "ged",
    "group_accuracies",
    "issue_f1",
    "issue_precision",
    "issue_recall",
    "label_issue_auprc",
    "label_issue_auroc",
    "load_prediction_file",
    "load_prediction_stats",
    "mean_pairwise_kl",
    "mlogit_score",
    "msp_score",
    "nll",
    "normalized_margin",
    "ood_metrics",
    "oracle_collaborative_accuracy",
    "reliability_diagram",
    "risk_coverage_curve",
    "rms_calibration_error",
    "save_prediction_file",
    "self_confidence",
    "soft_cross_entropy",
    "subpopulation_summary",
]
