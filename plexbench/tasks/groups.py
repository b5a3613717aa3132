"""Subpopulation groupings: which group each evaluated example belongs to.

Two sources:

- `metadata`: an integer array of the dataset (a key of plexbench.data.load.load_arrays).
- `kmeans_per_class` (the embedded suite's declared grouping): for each class c, k-means with
  `clusters_per_class` clusters on the training images of class c; group id = c *
  clusters_per_class + j. With Fashion-MNIST's 10 classes and 3 clusters per class that is
  exactly 30 groups, 3 per class. Exactly:
  1. features: pixels as float64 in [0, 1] (x / 255), flattened (H*W*C);
  2. PCA: the top `pca_dims` eigenvectors of the covariance of ALL the fit images (every
     clustered class), centred on their mean (`pca`, seeded with `seed`). PCA removes pixel noise so the
     clusters follow shape and brightness; eigenvector signs do not matter for distances;
  3. per class: k-means (Lloyd) in the PCA space, k-means++ initialisation from
     numpy.random.default_rng(seed + c), `n_init` restarts, the lowest within-cluster sum of
     squares kept; at most `max_iter` iterations, stopping when no assignment changes;
  4. a class's clusters are numbered by decreasing size (ties: by the centroid's first
     coordinate), so group ids do not depend on the initialisation order;
  5. an evaluated example goes to the nearest centroid (Euclidean, PCA space) among the
     clusters of its TRUE class (so a group never mixes classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from plexbench.errors import PlexbenchError


@dataclass(frozen=True)
class Centroids:
    """The fitted grouping: PCA `mean` (F,), `components` (F, P), and per class `centroids` (C, J, P)."""

    mean: np.ndarray
    components: np.ndarray
    centroids: np.ndarray

    @property
    def clusters_per_class(self) -> int:
        return int(self.centroids.shape[1])

    def project(self, images: np.ndarray) -> np.ndarray:
        return (pixel_features(images) - self.mean) @ self.components

    def assign(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Group id (N,) int64 = label * J + nearest centroid of the example's own class."""
        z = self.project(images)
        labels = np.asarray(labels, dtype=np.int64)
        own = self.centroids[labels]  # (N, J, P)
        nearest = np.argmin(((z[:, None, :] - own) ** 2).sum(-1), axis=1)
        return labels * self.clusters_per_class + nearest


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float64 (N, H*W*C) in [0, 1]."""
    images = np.asarray(images)
    return images.reshape(images.shape[0], -1).astype(np.float64) / 255.0


def pca(x: np.ndarray, dims: int, *, seed: int = 0, iterations: int = 30, oversample: int = 16
        ) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,) float64, components (F, dims) float64): the top eigenvectors of the covariance
    C = X_c^T X_c / n, largest eigenvalue first.

    C is accumulated in float32 (4x faster than float64 on pixel data), then the top eigenvectors
    come from block power (subspace) iteration: Q0 Gaussian (F, dims + oversample) from
    numpy.random.default_rng(seed), `iterations` times Q = qr(C Q), then Rayleigh-Ritz (eigh of
    Q^T C Q). A full eigh of a 784x784 or 3072x3072 matrix costs seconds on a small machine;
    this costs milliseconds and agrees on the leading directions.
    """
    mean = x.mean(axis=0)
    centred = (x - mean).astype(np.float32)
    cov = (centred.T @ centred).astype(np.float64) / max(x.shape[0], 1)
    width = min(dims + oversample, cov.shape[0])
    q = np.random.default_rng(seed).standard_normal((cov.shape[0], width))
    for _ in range(iterations):
        q, _ = np.linalg.qr(cov @ q)
    values, vectors = np.linalg.eigh(q.T @ cov @ q)  # ascending
    order = np.argsort(values)[::-1][:dims]
    return mean, q @ vectors[:, order]


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Centroids (k, P) of Lloyd's k-means with k-means++ starts; the best of `n_init` restarts.

    Needs at least k points. Deterministic for a given seed. An empty cluster (possible only
    with duplicate points) keeps its previous centroid.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least {k} points, got {x.shape[0]}")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = _kmeans_pp(x, k, rng)
        assign = None
        for _ in range(max_iter):
            dist = _sq_distances(x, centres)
            new = dist.argmin(axis=1)
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            for j in range(k):
                members = x[assign == j]
                if len(members):
                    centres[j] = members.mean(axis=0)
        inertia = _sq_distances(x, centres).min(axis=1).sum()
        if inertia < best_inertia:
            best, best_inertia = centres.copy(), inertia
    return best


def _sq_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, k) squared Euclidean distances, by broadcasting (exact; k is a handful here, and a
    skinny BLAS product is slower than this on small machines)."""
    return ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: the first centre uniformly, each next with probability proportional to D(x)^2."""
    centres = [x[rng.integers(x.shape[0])]]
    closest = _sq_distances(x, np.asarray(centres)).min(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        index = rng.choice(x.shape[0], p=closest / total) if total > 0 else rng.integers(x.shape[0])
        centres.append(x[index])
        closest = np.minimum(closest, _sq_distances(x, x[index][None]).ravel())
    return np.array(centres, dtype=np.float64)


def fit_kmeans_per_class(images: np.ndarray, labels: np.ndarray, *, num_classes: int, clusters_per_class: int,
                         pca_dims: int, seed: int, n_init: int = 10,
                         classes: Sequence[int] | None = None) -> Centroids:
    """Fit the grouping of the module docstring on uint8 images (N, H, W, C) and int labels (N,).

    `classes` (default: all `num_classes`) are the classes to cluster; the PCA uses the images of
    those classes only; centroids of other classes are NaN (never used: such examples are not
    evaluated). Every clustered class needs at least `clusters_per_class` images.
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes = list(range(num_classes)) if classes is None else sorted(classes)
    keep = np.isin(labels, classes)
    x = pixel_features(np.asarray(images)[keep])
    labels = labels[keep]
    mean, components = pca(x, min(pca_dims, x.shape[1]), seed=seed)
    z = (x - mean) @ components
    out = np.full((num_classes, clusters_per_class, components.shape[1]), np.nan)
    for c in classes:
        zc = z[labels == c]
        if zc.shape[0] < clusters_per_class:
            raise PlexbenchError(f"class {c} has {zc.shape[0]} fit images, fewer than clusters_per_class="
                                 f"{clusters_per_class}")
        centres = kmeans(zc, clusters_per_class, seed=seed + c, n_init=n_init)
        sizes = np.bincount(_sq_distances(zc, centres).argmin(axis=1), minlength=clusters_per_class)
        order = np.lexsort((centres[:, 0], -sizes))  # by size descending, then first coordinate
        out[c] = centres[order]
    return Centroids(mean, components, out)
