"""Label noise models: which labels of a labelled set are wrong, and what they say instead (spec §11).

Four noise types, one function each, all returning `NoisyLabels`:

- `symmetric(labels, num_classes, rate, seed)`: round(rate * N) examples are chosen; each gets a
  class drawn uniformly from ALL K classes, so about 1/K of the chosen keep their label (the
  realised noise rate is about rate * (K - 1) / K). This is the "uniform" noise of the literature
  (e.g. Patrini et al. 2017's symmetric noise counts a redraw of the same class as clean).
- `flip(labels, num_classes, rate, seed)`: the same choice of examples, each gets a class drawn
  uniformly from the K - 1 OTHER classes, so every chosen label changes (realised rate = exactly
  round(rate * N) / N).
- `asymmetric(labels, num_classes, rate, seed, class_map=...)`: class-dependent noise along a
  declared map of confusable classes (`ASYMMETRIC_MAPS`). Within each source class c of the map,
  round(rate * N_c) of its N_c examples are chosen and relabelled map[c]; classes outside the map
  keep every label. `rate` is thus the flip fraction of each source class (as in Patrini et al.
  2017, where "40% asymmetric" means 40% of the trucks are labelled automobile); the realised rate
  over all N examples is lower and is recorded.
- `real(clean, noisy)`: a dataset's own noisy labels (CIFAR-10N / CIFAR-100N human re-labels,
  registry entries `cifar10_n/<key>`, `cifar100_n/noisy`); the noisy mask is noisy != clean.

Determinism (the spec says "choose r*N examples with a seeded RNG"; the rules where it is silent):

- counts are rounded half up: round(x) = floor(x + 0.5), computed in float64;
- one `numpy.random.default_rng(seed)` per call draws a permutation of the candidate examples
  (all N, or class c's examples in index order for asymmetric noise, one class after another in
  increasing class order) and then, for the symmetric types, one replacement draw per position of
  that permutation; the first round(rate * N) positions are corrupted. So for one seed the noisy
  examples at rate 0.2 are a subset of those at rate 0.4, with the same replacement labels (nested
  noise: a rate sweep differs only by the added noise);
- the labels are never looked at when choosing the examples of symmetric / flip noise.

Worked example: labels [0, 1, 2, 3] with K = 4, `flip(..., rate=0.5, seed=s)` changes exactly
2 of the 4 labels, each to one of the 3 other classes: realised_rate 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

from plexbench.errors import PlexbenchError

NOISE_TYPES = ("symmetric", "flip", "asymmetric", "real")

# Declared maps of confusable classes for asymmetric noise: source class -> noisy label.
ASYMMETRIC_MAPS: Mapping[str, Mapping[int, int]] = MappingProxyType({
    # spec §11 (Patrini et al. 2017): truck->automobile, bird->airplane, cat<->dog, deer->horse.
    "cifar10": MappingProxyType({9: 1, 2: 0, 3: 5, 5: 3, 4: 7}),
    # plexbench's map for Fashion-MNIST: the three pairs the zoo models confuse most, both ways:
    # T-shirt/top (0) <-> Shirt (6), Pullover (2) <-> Coat (4), Sneaker (7) <-> Ankle boot (9).
    # Measured on the test split (det-mini, per 1,000 images of the true class): T-shirt->Shirt 106,
    # Shirt->T-shirt 115, Pullover->Coat 70, Coat->Pullover 89, Sneaker->Ankle boot 33,
    # Ankle boot->Sneaker 31; every other pair but Shirt->Pullover/Coat (73/70, Shirt is already
    # mapped) and Sandal->Sneaker (21) is below 35. Trouser, Dress, Sandal and Bag keep their labels,
    # as five of the ten CIFAR-10 classes do.
    "fashion_mnist": MappingProxyType({0: 6, 6: 0, 2: 4, 4: 2, 7: 9, 9: 7}),
    # Patrini et al. 2017's MNIST map, used for the 8x8 handwritten digits: 2->7, 3->8, 5<->6, 7->1.
    "digits": MappingProxyType({2: 7, 3: 8, 5: 6, 6: 5, 7: 1}),
})


@dataclass(frozen=True)
class NoisyLabels:
    """A noisy copy of a labelled set.

    - `labels`: int64 (N,), the noisy labels a learner sees;
    - `is_noisy`: bool (N,), labels != clean labels (the "true noisy mask" detection is scored on);
    - `chosen`: bool (N,), the examples the noise model drew (a chosen example may keep its label
      under `symmetric` noise); equal to `is_noisy` for `real` noise;
    - `noise_type`, `rate` (the requested rate; None for real noise), `seed` (None for real noise),
      `class_map` (asymmetric: the map used, as a dict), `key` (real: the noisy label key).
    """

    labels: np.ndarray
    is_noisy: np.ndarray
    chosen: np.ndarray
    noise_type: str
    rate: float | None = None
    seed: int | None = None
    class_map: Mapping[int, int] | None = None
    key: str | None = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def realised_rate(self) -> float:
        """Fraction of examples whose label differs from the clean one, mean(is_noisy)."""
        return float(np.mean(self.is_noisy)) if self.n else math.nan

    def describe(self) -> dict:
        """JSON facts: type, requested and realised rate, counts, seed, map or key."""
        out = {"type": self.noise_type, "rate": self.rate, "realised_rate": self.realised_rate,
               "num_noisy": int(self.is_noisy.sum()), "num_chosen": int(self.chosen.sum()), "n": self.n,
               "seed": self.seed}
        if self.class_map is not None:
            out["class_map"] = {str(k): int(v) for k, v in sorted(self.class_map.items())}
        if self.key is not None:
            out["key"] = self.key
        return out


def rounded_count(rate: float, n: int) -> int:
    """round(rate * n) with halves rounded up: floor(rate * n + 0.5) (e.g. 0.25 * 10 -> 3)."""
    return int(math.floor(float(rate) * int(n) + 0.5))


def symmetric(labels, num_classes: int, rate: float, seed: int) -> NoisyLabels:
    """Uniform noise over ALL K classes for round(rate * N) examples (a redraw may keep the label).

    `labels` int (N,) in [0, K); returns `NoisyLabels` with `is_noisy` = changed labels only.
    """
    return _uniform(labels, num_classes, rate, seed, exclude_own=False)


def flip(labels, num_classes: int, rate: float, seed: int) -> NoisyLabels:
    """Uniform noise over the K - 1 OTHER classes for round(rate * N) examples (every one changes)."""
    return _uniform(labels, num_classes, rate, seed, exclude_own=True)


def _uniform(labels, num_classes: int, rate: float, seed: int, *, exclude_own: bool) -> NoisyLabels:
    clean = _check_labels(labels, num_classes)
    _check_rate(rate)
    n, k = clean.shape[0], int(num_classes)
    rng = np.random.default_rng(_check_seed(seed))
    order = rng.permutation(n)
    # One draw per permutation position (not per chosen example), so that a higher rate keeps
    # the lower rate's noisy labels: noise is nested across rates for a seed.
    if exclude_own:
        draws = rng.integers(1, k, size=n)  # an offset 1..K-1: the new class is (y + offset) mod K
    else:
        draws = rng.integers(0, k, size=n)
    chosen_rows = order[:rounded_count(rate, n)]
    noisy = clean.copy()
    picked = draws[:chosen_rows.shape[0]]
    noisy[chosen_rows] = (clean[chosen_rows] + picked) % k if exclude_own else picked
    chosen = np.zeros(n, dtype=bool)
    chosen[chosen_rows] = True
    return NoisyLabels(noisy, noisy != clean, chosen, "flip" if exclude_own else "symmetric", float(rate), int(seed))


def asymmetric(labels, num_classes: int, rate: float, seed: int, *,
               class_map: str | Mapping[int, int]) -> NoisyLabels:
    """Class-dependent noise: round(rate * N_c) examples of each source class c relabelled map[c].

    `class_map` is a name of `ASYMMETRIC_MAPS` or a mapping {source class: noisy label} with
    distinct source != target classes in [0, K).

    >>> y = np.array([0, 0, 0, 0, 1, 1])
    >>> out = asymmetric(y, 2, 0.5, seed=0, class_map={0: 1})
    >>> int(out.is_noisy.sum()), out.realised_rate   # 2 of the 4 zeros became 1
    (2, 0.3333333333333333)
    """
    clean = _check_labels(labels, num_classes)
    _check_rate(rate)
    mapping = resolve_map(class_map, num_classes)
    rng = np.random.default_rng(_check_seed(seed))
    noisy = clean.copy()
    chosen = np.zeros(clean.shape[0], dtype=bool)
    for source in sorted(mapping):
        rows = np.flatnonzero(clean == source)
        picked = rows[rng.permutation(rows.shape[0])[:rounded_count(rate, rows.shape[0])]]
        noisy[picked] = mapping[source]
        chosen[picked] = True
    return NoisyLabels(noisy, noisy != clean, chosen, "asymmetric", float(rate), int(seed), dict(mapping))


def real(clean, noisy, num_classes: int, *, key: str | None = None) -> NoisyLabels:
    """A dataset's own noisy labels: `clean` and `noisy` int (N,) in [0, K); mask = noisy != clean."""
    c = _check_labels(clean, num_classes, "clean labels")
    y = _check_labels(noisy, num_classes, "noisy labels")
    if c.shape != y.shape:
        raise PlexbenchError(f"clean labels have {c.shape[0]} examples but noisy labels {y.shape[0]}")
    mask = y != c
    return NoisyLabels(y.copy(), mask, mask.copy(), "real", None, None, None, key)


def apply(noise_type: str, labels, num_classes: int, *, rate: float | None = None, seed: int = 0,
          class_map: str | Mapping[int, int] | None = None) -> NoisyLabels:
    """Synthetic noise by type name: `symmetric`, `flip` or `asymmetric` (which needs `class_map`)."""
    if noise_type in ("symmetric", "flip"):
        fn = symmetric if noise_type == "symmetric" else flip
        return fn(labels, num_classes, rate, seed)
    if noise_type == "asymmetric":
        if class_map is None:
            raise PlexbenchError("asymmetric noise needs a class map: one of " + ", ".join(ASYMMETRIC_MAPS))
        return asymmetric(labels, num_classes, rate, seed, class_map=class_map)
    if noise_type == "real":
        raise PlexbenchError("real noise comes from a dataset's noisy labels: use plexbench.data.noise.real")
    raise PlexbenchError(f"unknown noise type '{noise_type}' (known: {', '.join(NOISE_TYPES)})")


def resolve_map(class_map: str | Mapping[int, int], num_classes: int) -> dict[int, int]:
    """The map as {source: target} ints, validated against K; a name is looked up in ASYMMETRIC_MAPS."""
    if isinstance(class_map, str):
        if class_map not in ASYMMETRIC_MAPS:
            raise PlexbenchError(f"unknown asymmetric noise map '{class_map}' (known: {', '.join(ASYMMETRIC_MAPS)})")
        class_map = ASYMMETRIC_MAPS[class_map]
    out = {int(s): int(t) for s, t in dict(class_map).items()}
    for s, t in out.items():
        if not (0 <= s < num_classes and 0 <= t < num_classes) or s == t:
            raise PlexbenchError(f"asymmetric noise map entry {s}->{t} is not a change between classes 0..{num_classes - 1}")
    return out


def _check_labels(labels, num_classes: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise PlexbenchError(f"{name} must be integers of shape (N,), got dtype {arr.dtype} shape {arr.shape}")
    if int(num_classes) < 2:
        raise PlexbenchError(f"label noise needs at least 2 classes, got {num_classes}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise PlexbenchError(f"{name} span [{arr.min()}, {arr.max()}], expected [0, {num_classes})")
    return arr.astype(np.int64)


def _check_rate(rate) -> None:
    if not (isinstance(rate, (int, float, np.integer, np.floating)) and not isinstance(rate, bool)
            and 0.0 <= float(rate) <= 1.0):
        raise PlexbenchError(f"noise rate must be a number in [0, 1], got {rate!r}")


def _check_seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise PlexbenchError(f"noise seed must be a non-negative integer, got {seed!r}")
    return int(seed)
