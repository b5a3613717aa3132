"""Metrics against soft labels (CIFAR-10H, ImageNet ReaL-H; spec §5).

`soft_labels` float (N, K): vote fractions, non-negative rows summing to 1 (same
tolerance and renormalisation rule as probabilities). Accuracy and ECE against
argmax(soft label) are the ordinary `accuracy` / `ece` called with that argmax (or with an
`ExampleStats` built with `soft_labels`, whose labels are that argmax). Both metrics here also take
one `ExampleStats` built with soft labels instead of the two arrays.
"""

from __future__ import annotations

import math

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics.vocabulary import declares
from plexbench.metrics.stats import NLL_CLIP, ExampleStats, Source


def _soft_stats(soft_labels, predictions, source: str, want: tuple[str, ...], what: str) -> ExampleStats:
    if isinstance(soft_labels, ExampleStats):
        if predictions is not None:
            raise PlexbenchError(f"{what}: pass either ExampleStats or (soft_labels, {source}), not both")
        stats = soft_labels
    else:
        src = Source(source, predictions)
        soft = np.asarray(soft_labels)
        if soft.ndim != 2 or soft.shape != (src.num_examples, src.num_classes):
            raise PlexbenchError(f"soft_labels have shape {soft.shape} but {source} have shape "
                                 f"{(src.num_examples, src.num_classes)}")
        stats = ExampleStats.build(src, soft_labels=soft, want=want)
    if not stats.has_soft:
        raise PlexbenchError(f"{what} needs soft labels")
    return stats


@declares("soft_ce", "soft_cross_entropy", direction="lower", category="prediction", value_range=(0.0, math.inf),
          paper="nll", plexbench="nll", description="cross-entropy against soft labels (the paper's loss on CIFAR-10H)")
def soft_cross_entropy(soft_labels, log_probs=None, *, clip: float | None = NLL_CLIP) -> float:
    """mean_i -sum_k y_ik log max(p_ik, clip): cross-entropy against the soft label, from log-probs.

    Terms with y_ik = 0 are 0 even where log p_ik = -inf. `clip`: Plex's 1e-7 by default (spec §5,
    as `nll`); clip=None is exact (y_ik > 0 with p_ik = 0 then gives inf). float64 arithmetic.

    >>> round(soft_cross_entropy([[0.5, 0.5]], np.log([[0.25, 0.75]])), 6)  # -(ln .25 + ln .75)/2
    0.836988
    """
    stats = _soft_stats(soft_labels, log_probs, "log_probs", ("nll",), "soft_cross_entropy")
    return float(np.mean(stats.nll_terms(clip)))


@declares("ged", direction="lower", category="uncertainty", value_range=(0.0, 2.0), plexbench="half",
          description="generalised energy distance between predicted and label distributions")
def ged(soft_labels, probs=None) -> float:
    """Generalised energy distance between soft label y and prediction p, averaged over examples.

    GED = 2 * distance - label diversity - sample diversity, with distance = sum_{i != j}
    y_i p_j, label diversity = sum_{i != j} y_i y_j, sample diversity = sum_{i != j} p_i p_j
    (spec §5). With sum_{i != j} a_i b_j = (sum a)(sum b) - a.b this is computed as
    2 (Sy Sp - y.p) - (Sy^2 - y.y) - (Sp^2 - p.p) in float64; for normalised rows it equals
    ||y - p||^2, the Brier score against the soft label.

    >>> round(ged([[1.0, 0.0]], [[0.5, 0.5]]), 6)  # 2*0.5 - 0 - 0.5
    0.5
    """
    stats = _soft_stats(soft_labels, probs, "probs", ("ged",), "ged")
    return float(np.mean(stats.ged))
