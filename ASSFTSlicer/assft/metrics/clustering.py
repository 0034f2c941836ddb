"""Parts of a pool: k-means on case descriptors, and the case that stands for each part.

Used to propose held-out scans that cover the pool, to tell which part of the archive a
version made worse, and by the label-free typicality baseline (the case nearest each
centroid, the cold-start baseline of recent active-learning benchmarks: Hacohen et al.,
"Active learning on a budget", ICML 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Clusters:
    """A k-means partition of ``N`` cases.

    Attributes:
        labels: the part of each case, ``(N,)`` in ``0 .. k-1``, numbered by size (0 largest).
        centres: ``(k, D)``.
        representatives: per part, the index of the case nearest its centre.
        inertia: the sum of squared distances to the centres.
    """

    labels: np.ndarray
    centres: np.ndarray
    representatives: list[int]
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centres.shape[0])

    def sizes(self) -> list[int]:
        return [int((self.labels == j).sum()) for j in range(self.k)]


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x**2).sum(1)[:, None] + (centres**2).sum(1)[None, :] - 2.0 * x @ centres.T
    return np.clip(d, 0.0, None)


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 8, iterations: int = 100
) -> Clusters:
    """Lloyd's k-means with k-means++ seeding, the best of ``restarts`` runs (least inertia).

    Deterministic for a seed. Parts are numbered by size, largest first (ties by their first
    case), so that the numbering is stable for one pool.

    Raises:
        ValueError: ``k`` outside 1 .. N.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of cases {n}, got {k}")
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(restarts):
        centres = x[[int(rng.integers(n))]]
        while centres.shape[0] < k:
            d = _squared_distances(x, centres).min(1)
            total = d.sum()
            pick = int(rng.choice(n, p=d / total)) if total > 0 else int(rng.integers(n))
            centres = np.vstack([centres, x[pick]])
        labels = np.zeros(n, dtype=int)
        for _ in range(iterations):
            labels = _squared_distances(x, centres).argmin(1)
            moved = np.array(
                [x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)]
            )
            if np.allclose(moved, centres):
                break
            centres = moved
        labels = _squared_distances(x, centres).argmin(1)
        inertia = float(_squared_distances(x, centres)[np.arange(n), labels].sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels, centres)
    assert best is not None
    inertia, labels, centres = best
    order = sorted(range(k), key=lambda j: (-(labels == j).sum(), int(np.argmax(labels == j))))
    remap = np.empty(k, dtype=int)
    remap[order] = np.arange(k)
    labels, centres = remap[labels], centres[order]
    distances = _squared_distances(x, centres)
    representatives = [
        int(np.flatnonzero(labels == j)[distances[labels == j, j].argmin()])
        if (labels == j).any()
        else int(distances[:, j].argmin())
        for j in range(k)
    ]
    return Clusters(
        labels=labels, centres=centres, representatives=representatives, inertia=inertia
    )


SILHOUETTE_SAMPLE = 1000
"""The silhouette is computed on at most this many cases (a fixed sample): it is quadratic."""


def silhouette(x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """The mean silhouette of a partition (Rousseeuw, 1987): near 1 for well-separated parts,
    near 0 for none; 0 for a single part. Over :data:`SILHOUETTE_SAMPLE` cases at most."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    labels = np.asarray(labels)
    if x.shape[0] > SILHOUETTE_SAMPLE:
        keep = np.random.default_rng(seed).choice(x.shape[0], SILHOUETTE_SAMPLE, replace=False)
        x, labels = x[keep], labels[keep]
    parts = np.unique(labels)
    if parts.size < 2:
        return 0.0
    d = np.sqrt(_squared_distances(x, x))
    scores = []
    for i in range(x.shape[0]):
        same = labels == labels[i]
        if same.sum() <= 1:
            scores.append(0.0)
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == p].mean() for p in parts if p != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


SEPARATED = 0.45
"""The mean silhouette a split must pass to count as parts. A single Gaussian cloud splits with
about 0.33 in two dimensions; the acquisition descriptors of the demo model (40 scans each)
split with at most 0.30 on the coherent `t2` site and 0.36 on `lowfield`, and with 0.80
(`hospital`: T2 apart from the rest) and 0.54 (`multicentre`: three parts) on the lab
archives. The `flair` site splits too (0.73, into 29 and 11 scans; the smaller part carries
less lesion load, 2 ml against 7 ml on average)."""


def choose_parts(x: np.ndarray, *, most: int = 6, seed: int = 0) -> Clusters:
    """k-means with the k in 2 .. ``most`` (at most N - 1) of the best mean silhouette; one part
    when the pool is too small to split or no split passes :data:`SEPARATED`."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    n = x.shape[0]
    best = kmeans(x, 1, seed=seed)
    best_score = SEPARATED
    for k in range(2, min(most, n - 1) + 1):
        candidate = kmeans(x, k, seed=seed)
        score = silhouette(x, candidate.labels)
        if score > best_score + 1e-12:
            best, best_score = candidate, score
    return best
