"""Metrics against soft labels (CIFAR-10H, ImageNet ReaL-H; spec §5).

`soft_labels` float (N, K): vote fractions, non-negative rows summing to 1 (same
tolerance and renormalisation rule as probabilities). Accuracy and ECE against
argmax(soft label) are the ordinary `accuracy` / `ece` called with that argmax.
"""

from __future__ import annotations

import math

import numpy as np

from plexbench.errors import PlexbenchError
from plexbench.metrics import _checks as C
from plexbench.metrics.classification import nll_per_example, row_dots, squared_norms
from plexbench.metrics.vocabulary import declares


def _check_soft(soft_labels, other: np.ndarray, other_name: str) -> np.ndarray:
    y = C.check_probs(soft_labels, "soft_labels")
    if y.shape != other.shape:
        raise PlexbenchError(f"soft_labels have shape {y.shape} but {other_name} have shape {other.shape}")
    return y


@declares("soft_ce", "soft_cross_entropy", direction="lower", category="prediction", value_range=(0.0, math.inf),
          paper="nll", plexbench="nll", description="cross-entropy against soft labels (the paper's loss on CIFAR-10H)")
def soft_cross_entropy(soft_labels, log_probs) -> float:
    """mean_i -sum_k y_ik log p_ik: cross-entropy against the soft label, exact from log-probs.

    Terms with y_ik = 0 are 0 even where log p_ik = -inf; y_ik > 0 with p_ik = 0 gives inf.

    >>> round(soft_cross_entropy([[0.5, 0.5]], np.log([[0.25, 0.75]])), 6)  # -(ln .25 + ln .75)/2
    0.836988
    """
    lp = C.check_log_probs(log_probs)
    y = _check_soft(soft_labels, lp, "log_probs")
    return float(np.mean(nll_per_example(None, y, lp)))


@declares("ged", direction="lower", category="uncertainty", value_range=(0.0, 2.0), plexbench="half",
          description="generalised energy distance between predicted and label distributions")
def ged(soft_labels, probs) -> float:
    """Generalised energy distance between soft label y and prediction p, averaged over examples.

    GED = 2 * distance - label diversity - sample diversity, with distance = sum_{i != j}
    y_i p_j, label diversity = sum_{i != j} y_i y_j, sample diversity = sum_{i != j} p_i p_j
    (spec §5). With sum_{i != j} a_i b_j = (sum a)(sum b) - a.b this is computed as
    2 (Sy Sp - y.p) - (Sy^2 - y.y) - (Sp^2 - p.p); for normalised rows it equals
    ||y - p||^2, the Brier score against the soft label.

    >>> round(ged([[1.0, 0.0]], [[0.5, 0.5]]), 6)  # 2*0.5 - 0 - 0.5
    0.5
    """
    p = C.check_probs(probs)
    y = _check_soft(soft_labels, p, "probs")
    sy = y.sum(axis=1)
    sp = p.sum(axis=1)
    yp = row_dots(y, p)
    distance = sy * sp - yp
    label_div = sy * sy - squared_norms(y)
    sample_div = sp * sp - squared_norms(p)
    return float(np.mean(2.0 * distance - label_div - sample_div))
