"""The metric set of `plexbench score` (also used by the task runner).

`score(preds, ood=..., fit=..., bootstrap=..., seed=...)` returns a flat dict of floats:

- always: accuracy, nll, ece, brier, calib_auc, oc_acc@0.5%, oc_acc@1%, oc_acc@2%,
  oc_acc@5%, aurc, eaurc -- calib_auc only when there are both correct and incorrect
  predictions (otherwise it is undefined and the key is left out);
- with `ood`: ood/{msp,entropy,mlogit}/{auroc,auprc,fpr95}; the mlogit keys only when
  both prediction sets carry logits (probabilities alone do not determine the max logit);
- with `ood` and `fit`: ood/{maha,rmaha}/{auroc,auprc,fpr95} (needs embeddings in both
  prediction sets);
- with `bootstrap` = B > 0: <key>/ci_low and <key>/ci_high after each key, the 95%
  percentile interval over B resamples.

Soft labels: nll is the soft-label cross-entropy, brier is measured against the soft label,
and accuracy, ece and the selective metrics use argmax(soft label) (`Predictions.labels`).

Everything follows from a few per-example vectors (confidence, correctness, per-example NLL
and Brier), computed in one pass over the (N, K) probabilities; the examples are sorted by
confidence once for calib_auc, AURC and E-AURC. The bootstrap resamples those vectors, not
the (N, K) matrix, and reuses the sort: a resample is laid out in the stable
descending-confidence order of the data (ties in example order, as for the point estimate)
by repeating each example as often as it was drawn.

Bootstrap resampling: in-distribution rows with `numpy.random.default_rng(seed)`, N draws
per resample (the same draws as `bootstrap_ci(fn, labels, probs, seed=seed)`, which lays
each resample out in draw order instead), OOD
rows independently with `default_rng([seed, 1])`; the Mahalanobis fit is not resampled.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import bootstrap as B
from plexbench.metrics._checks import UndefinedMetricWarning
from plexbench.metrics.classification import (
    brier_per_example,
    calib_auc_sorted,
    ece_from,
    nll_per_example,
    top_label,
)
from plexbench.metrics.ood import MahalanobisScorer, entropy_from_probs, mlogit_score, ood_metrics_sorted
from plexbench.metrics.predictions import Predictions
from plexbench.metrics.selective import area, cumulative_risk, oc_acc_from, optimal_aurc, sort_by_confidence
from plexbench.progress import bar

ECE_BINS = 15
OC_FRACTIONS = (("oc_acc@0.5%", 0.005), ("oc_acc@1%", 0.01), ("oc_acc@2%", 0.02), ("oc_acc@5%", 0.05))
BASE_KEYS = ("accuracy", "nll", "ece", "brier", "calib_auc", *(k for k, _ in OC_FRACTIONS), "aurc", "eaurc")
OOD_SCORERS = ("msp", "entropy", "mlogit", "maha", "rmaha")
OOD_METRICS = ("auroc", "auprc", "fpr95")
CI_ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class ExampleStats:
    """Per-example quantities every in-distribution metric of the set is a function of."""

    conf: np.ndarray  # float64 (N,) top-label confidence
    correct: np.ndarray  # bool (N,) argmax == label
    nll: np.ndarray  # float64 (N,) -log p_y, or soft-label cross-entropy
    brier: np.ndarray  # float64 (N,) sum_k (p_k - y_k)^2

    def take(self, idx: np.ndarray) -> "ExampleStats":
        return ExampleStats(self.conf[idx], self.correct[idx], self.nll[idx], self.brier[idx])


def example_stats(preds: Predictions) -> ExampleStats:
    labels = preds.require_labels()
    soft = preds.soft_labels
    hard = None if soft is not None else labels
    conf, pred = top_label(preds.probs)
    return ExampleStats(
        conf=conf,
        correct=pred == labels,
        nll=nll_per_example(hard, soft, preds.log_probs),
        brier=brier_per_example(hard, soft, preds.probs),
    )


def classification_metrics(st: ExampleStats) -> dict[str, float]:
    """The in-distribution keys from per-example stats (calib_auc NaN when undefined)."""
    n = st.conf.shape[0]
    order = sort_by_confidence(st.conf)
    sorted_correct = st.correct[order]
    aurc = area(cumulative_risk(sorted_correct))
    out = {
        "accuracy": float(np.count_nonzero(st.correct) / n),
        "nll": float(np.mean(st.nll)),
        "ece": ece_from(st.conf, st.correct, ECE_BINS),
        "brier": float(np.mean(st.brier)),
        "calib_auc": calib_auc_sorted(st.conf[order], ~sorted_correct),
    }
    for key, fraction in OC_FRACTIONS:
        out[key] = oc_acc_from(st.conf, st.correct, fraction)
    out["aurc"] = aurc
    out["eaurc"] = aurc - optimal_aurc(n, n - int(np.count_nonzero(st.correct)))
    return out


def _fit_scorer(fit) -> MahalanobisScorer:
    if isinstance(fit, MahalanobisScorer):
        fit.num_members  # raises if not fitted
        return fit
    if isinstance(fit, Predictions):
        if fit.embeddings is None:
            raise PlexbenchError("the fit predictions have no embeddings")
        return MahalanobisScorer().fit(fit.embeddings, fit.require_labels("fit predictions"))
    if isinstance(fit, tuple) and len(fit) == 2:
        return MahalanobisScorer().fit(*fit)
    raise PlexbenchError("fit must be a MahalanobisScorer, a Predictions or an (embeddings, labels) tuple")


def ood_scores(preds: Predictions, ood: Predictions, fit=None, conf_in: np.ndarray | None = None):
    """{scorer: (scores of preds (N,), scores of ood (M,))}, higher = more OOD."""
    conf_in = top_label(preds.probs)[0] if conf_in is None else conf_in
    scores = {
        "msp": (1.0 - conf_in, 1.0 - top_label(ood.probs)[0]),
        "entropy": (entropy_from_probs(preds.probs), entropy_from_probs(ood.probs)),
    }
    if preds.logits is not None and ood.logits is not None:
        scores["mlogit"] = (mlogit_score(preds.logits), mlogit_score(ood.logits))
    if fit is not None:
        for which, p in (("predictions", preds), ("OOD predictions", ood)):
            if p.embeddings is None:
                raise PlexbenchError(f"Mahalanobis scores need embeddings, but the {which} have none")
        scorer = _fit_scorer(fit)
        m_in, m_out = scorer.score(preds.embeddings), scorer.score(ood.embeddings)
        scores["maha"] = (m_in["maha"], m_out["maha"])
        scores["rmaha"] = (m_in["rmaha"], m_out["rmaha"])
    return scores


@dataclasses.dataclass(frozen=True)
class _SortedOOD:
    """One scorer's in+OOD scores sorted once (ascending, stable), for point value and resamples."""

    order: np.ndarray  # positions in concatenate([in, out]) in ascending score order
    scores: np.ndarray  # the sorted scores
    is_ood: np.ndarray  # the matching flags

    @classmethod
    def build(cls, s_in: np.ndarray, s_out: np.ndarray) -> "_SortedOOD":
        scores = np.concatenate([s_in, s_out])
        order = np.argsort(scores, kind="stable")
        flags = np.concatenate([np.zeros(s_in.shape[0], bool), np.ones(s_out.shape[0], bool)])
        return cls(order, scores[order], flags[order])

    def metrics(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """Metrics of the full sets, or of a resample given each example's draw count."""
        if counts is None:
            return ood_metrics_sorted(self.scores, self.is_ood)
        repeats = counts[self.order]  # a resample, already in score order: no new sort
        return ood_metrics_sorted(np.repeat(self.scores, repeats), np.repeat(self.is_ood, repeats))


def _ood_metrics(sorted_scores: dict[str, _SortedOOD], counts: np.ndarray | None = None) -> dict[str, float]:
    out = {}
    for name in OOD_SCORERS:
        if name in sorted_scores:
            for metric, value in sorted_scores[name].metrics(counts).items():
                out[f"ood/{name}/{metric}"] = value
    return out


def score(preds: Predictions, *, ood: Predictions | None = None, fit=None, bootstrap: int = 0,
          seed: int = 0) -> dict[str, float]:
    """The `plexbench score` metric set as {name: float}; see the module docstring.

    preds: in-distribution predictions with labels. ood: predictions on OOD data (labels not
    needed). fit: training-split embeddings for Mahalanobis scores, as a fitted
    `MahalanobisScorer`, a `Predictions` with embeddings and labels, or an
    (embeddings, labels) tuple; only with `ood`.
    """
    if fit is not None and ood is None:
        raise PlexbenchError("a Mahalanobis fit is only used together with OOD predictions")
    if isinstance(bootstrap, bool) or int(bootstrap) != bootstrap or bootstrap < 0:
        raise PlexbenchError(f"bootstrap must be a non-negative integer, got {bootstrap}")
    st = example_stats(preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # an undefined calib_auc is left out
        values = classification_metrics(st)
    if np.isnan(values["calib_auc"]):
        del values["calib_auc"]
    scores = None
    if ood is not None:
        scores = {k: _SortedOOD.build(*v) for k, v in ood_scores(preds, ood, fit, st.conf).items()}
        values.update(_ood_metrics(scores))
    if not bootstrap:
        return values
    intervals = _bootstrap(st, scores, int(bootstrap), seed)
    out = {}
    for key, value in values.items():
        out[key] = value
        out[f"{key}/ci_low"], out[f"{key}/ci_high"] = intervals[key]
    return out


def _bootstrap(st: ExampleStats, scores: dict[str, _SortedOOD] | None, num_samples: int,
               seed: int) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every key over `num_samples` resamples.

    A resample is the multiset of drawn rows; it is laid out in the examples' stable
    descending-confidence order (ties in example order), the order the point estimate uses,
    so no resample needs a new sort: rows = repeat(order, draw counts).
    """
    n = st.conf.shape[0]
    m = scores[next(iter(scores))].order.shape[0] - n if scores else 0
    order = sort_by_confidence(st.conf)
    by_conf = st.take(order)
    positions = np.arange(n)
    rng_in = np.random.default_rng(seed)
    rng_out = np.random.default_rng([seed, 1])
    samples: dict[str, list[float]] = {}
    with warnings.catch_warnings(), bar(num_samples, "bootstrap", unit="resample") as progress:
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for _ in range(num_samples):
            counts_in = np.bincount(rng_in.integers(0, n, size=n), minlength=n)
            row = classification_metrics(by_conf.take(np.repeat(positions, counts_in[order])))
            if scores:
                counts_out = np.bincount(rng_out.integers(0, m, size=m), minlength=m)
                row.update(_ood_metrics(scores, np.concatenate([counts_in, counts_out])))
            for key, value in row.items():
                samples.setdefault(key, []).append(value)
            progress.update(1)
    return {key: B.percentile_interval(v, CI_ALPHA, key) for key, v in samples.items()}
