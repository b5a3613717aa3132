"""Subpopulation groupings: which group each evaluated example belongs to.

Two sources:

- `metadata`: an integer array of the dataset (a key of plexbench.data.load.load_arrays).
- `kmeans_per_class` (the embedded suite's declared grouping): for each class c, k-means with
  `clusters_per_class` clusters on the training images of class c; group id = c *
  clusters_per_class + j. With Fashion-MNIST's 10 classes and 3 clusters per class that is
  exactly 30 groups, 3 per class. Exactly (PCA and k-means are scikit-learn's):
  1. features: pixels as float64 in [0, 1] (x / 255), flattened (H*W*C);
  2. PCA: `sklearn.decomposition.PCA(pca_dims, random_state=seed)` fitted on ALL the fit images
     (every clustered class), centred on their mean. PCA removes pixel noise so the clusters
     follow shape and brightness; component signs do not matter for distances;
  3. per class c: `sklearn.cluster.KMeans(clusters_per_class, init="k-means++", n_init=n_init,
     random_state=seed + c)` (Lloyd; the restart with the lowest within-cluster sum of squares
     is kept) in the PCA space;
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


def pca(x: np.ndarray, dims: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,) float64, components (F, dims) float64): scikit-learn's PCA of `x`, largest
    variance first."""
    from sklearn.decomposition import PCA

    fitted = PCA(dims, random_state=seed).fit(x)
    return fitted.mean_.astype(np.float64), fitted.components_.T.astype(np.float64)


def kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 10) -> np.ndarray:
    """Centroids (k, P) of scikit-learn's k-means (k-means++ starts, the best of `n_init` restarts).

    Needs at least k points; deterministic for a given seed."""
    from sklearn.cluster import KMeans

    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least {k} points, got {x.shape[0]}")
    return KMeans(k, init="k-means++", n_init=n_init, random_state=seed).fit(x).cluster_centers_.astype(np.float64)


def _sq_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, k) squared Euclidean distances, by broadcasting (exact; k is a handful here)."""
    return ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)


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
