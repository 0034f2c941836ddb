"""Turning per-case scores into a batch: rank normalisation and diverse greedy selection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assft.metrics.acquisition import acquisition_distance


def rank_normalise(values: np.ndarray) -> np.ndarray:
    """Rank normalisation q(x) to [0, 1], robust to each metric's scale.

    The smallest value maps to 0, the largest to 1, ties share their average rank, and a pool
    of one case maps to 0.5.

    Raises:
        ValueError: if a value is NaN.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("rank_normalise got NaN scores")
    n = x.size
    if n == 0:
        return x
    if n == 1:
        return np.array([0.5])
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # Average the ranks of tied values.
    unique, inverse = np.unique(x, return_inverse=True)
    if unique.size < n:
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks / (n - 1)


def _unit_rows(z: np.ndarray) -> np.ndarray:
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise 1 - cos between the rows of ``a`` (N, D) and ``b`` (M, D): shape (N, M)."""
    return 1.0 - _unit_rows(a) @ _unit_rows(b).T


@dataclass
class GreedySelection:
    """The outcome of a greedy batch selection.

    Attributes:
        picks: indices of the selected cases, in the order they were picked.
        diversity: per case, D_i (min cosine distance to the labeled and picked cases) at the
            moment it was picked, or at the end of selection for cases not picked.
        objective: per case, the objective S_i + lambda * q(D_i) when it was picked, or at the
            end for cases not picked.
    """

    picks: list[int]
    diversity: np.ndarray
    objective: np.ndarray


SPREAD_QUANTILE = 0.9
"""The pool's spread is this quantile of its pairwise distances. The median was tried first: on
the `hospital` archive the FLAIR scans lie farther apart from each other (0.58) than the median
pair (0.50, most pairs being 3 T T1), so a second FLAIR scan earned the full diversity credit
and ATTSQ picked two FLAIR scans rather than a FLAIR and a T2 one (1.85 away)."""


def _pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    return cosine_distance(a, b) if metric == "cosine" else acquisition_distance(a, b)


def pool_spread(z: np.ndarray, metric: str = "cosine") -> float:
    """How far apart the rows of ``z`` (a pool) lie: the :data:`SPREAD_QUANTILE` of their
    pairwise distances (``cosine``, or ``rms``: the root mean square difference, as
    :func:`assft.metrics.acquisition_distance`); 1.0 for fewer than two rows or identical ones."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    if z.shape[0] < 2:
        return 1.0
    d = _pairwise(z, z, metric)[np.triu_indices(z.shape[0], k=1)]
    spread = float(np.quantile(d, SPREAD_QUANTILE))
    return spread if spread > 1e-12 else 1.0


def greedy_diverse_selection(
    scores: np.ndarray,
    z0: np.ndarray,
    budget: int,
    *,
    labeled_z0: np.ndarray | None = None,
    lambda_div: float = 1.0,
    scale: str = "typical",
    metric: str = "cosine",
) -> GreedySelection:
    """ATTSQ's diversity-aware greedy batch selection.

    At each pick take ``argmax_i S_i + lambda_div * D~_i`` over the cases not picked yet,
    where ``D_i`` is the distance from case i to the nearest labeled or already picked case, in
    the space of the rows of ``z0`` (``metric``: ``cosine``, or ``rms`` for acquisition
    descriptors).

    ``scale`` says how D_i enters:

    - ``typical`` (the default): with the cosine, the rows are centred on the pool's mean
      first (pooled features share a large common direction, so raw cosine distances all lie
      near 0); ``D~ = min(1, D / spread)`` with ``spread`` the pool's :func:`pool_spread` (the
      90th percentile of its pairwise distances): a case as far from everything labeled as the
      pool's far pairs are apart earns the full ``lambda_div``, whatever the pool. ``D~ = 1``
      while nothing is labeled or picked.
    - ``rank`` (before): raw rows, and D_i rank-normalised over the remaining cases, which
      stretches even tiny differences to the full [0, 1]. ``D = 1`` while nothing is labeled
      or picked.

    Ties go to the lower index, so the selection is deterministic.

    Args:
        scores: S_i per case, ``(N,)``.
        z0: the cases' rows, ``(N, D)`` (pretrained embeddings or acquisition descriptors).
        budget: number of cases to pick (at most N).
        labeled_z0: the rows of the cases already labeled, ``(L, D)``, or None.
        lambda_div: weight of the diversity term (0 switches diversity off).
        scale: ``typical`` or ``rank`` (above).
        metric: ``cosine`` or ``rms``.

    Returns:
        The picks; ``diversity`` holds D~ (``typical``) or D (``rank``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    if budget < 0 or budget > n:
        raise ValueError(f"budget {budget} must be between 0 and the pool size {n}")
    if scale not in ("typical", "rank"):
        raise ValueError(f"scale must be 'typical' or 'rank', got {scale!r}")
    if metric not in ("cosine", "rms"):
        raise ValueError(f"metric must be 'cosine' or 'rms', got {metric!r}")
    z = np.asarray(z0, dtype=np.float64) if n else np.zeros((0, 1))
    labeled = (
        np.asarray(labeled_z0, dtype=np.float64)
        if labeled_z0 is not None and len(labeled_z0)
        else None
    )
    spread = 1.0
    if scale == "typical" and n:
        if metric == "cosine":
            centre = z.mean(axis=0, keepdims=True)
            z = z - centre
            labeled = labeled - centre if labeled is not None else None
        spread = pool_spread(z, metric)
    if labeled is not None:
        distance = _pairwise(z, labeled, metric).min(axis=1) / spread
    else:
        distance = np.ones(n)
    if scale == "typical":
        distance = np.minimum(distance, 1.0)
    remaining = np.ones(n, dtype=bool)
    diversity = distance.copy()
    objective = np.zeros(n)
    picks: list[int] = []

    def current_objective() -> np.ndarray:
        value = np.full(n, -np.inf)
        term = rank_normalise(distance[remaining]) if scale == "rank" else distance[remaining]
        value[remaining] = scores[remaining] + lambda_div * term
        return value

    for _ in range(budget):
        value = current_objective()
        best = int(np.argmax(value))
        picks.append(best)
        diversity[best] = distance[best]
        objective[best] = value[best]
        remaining[best] = False
        step = _pairwise(z, z[best : best + 1], metric)[:, 0] / spread
        distance = np.minimum(distance, np.minimum(step, 1.0) if scale == "typical" else step)
    if remaining.any():
        value = current_objective()
        objective[remaining] = value[remaining]
        diversity[remaining] = distance[remaining]
    return GreedySelection(picks=picks, diversity=diversity, objective=objective)


def k_center_greedy(
    z: np.ndarray, budget: int, *, labeled_z: np.ndarray | None = None
) -> GreedySelection:
    """Core-set selection by k-center greedy on cosine distance (Sener and Savarese, 2018).

    Each pick is the case farthest from its nearest labeled or picked case; with nothing
    labeled, the first pick is the case farthest from the pool's mean embedding.
    """
    n = len(z)
    if budget < 0 or budget > n:
        raise ValueError(f"budget {budget} must be between 0 and the pool size {n}")
    zu = _unit_rows(z)
    if labeled_z is not None and len(labeled_z):
        distance = cosine_distance(zu, labeled_z).min(axis=1)
    else:
        distance = cosine_distance(zu, zu.mean(axis=0, keepdims=True))[:, 0]
    remaining = np.ones(n, dtype=bool)
    diversity = distance.copy()
    picks: list[int] = []
    for _ in range(budget):
        value = np.where(remaining, distance, -np.inf)
        best = int(np.argmax(value))
        picks.append(best)
        diversity[best] = distance[best]
        remaining[best] = False
        distance = np.minimum(distance, 1.0 - zu @ zu[best])
    diversity[remaining] = distance[remaining]
    return GreedySelection(picks=picks, diversity=diversity, objective=diversity.copy())


def power_sampling_order(
    class_scores: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    *,
    beta: float = 1.0,
) -> list[int]:
    """Class-stratified power sampling, after ClaSP PE (Lueth et al., 2026).

    Picks cycle through the classes; for class c the next pick is drawn among the cases not
    picked yet with probability proportional to ``score_c^beta`` (the Gumbel-top-1 trick on
    ``beta * log score``). A larger beta means less noise (later rounds exploit more).

    Args:
        class_scores: ``(N, K)`` score of each case for each class (e.g. the mean predictive
            entropy over the voxels predicted as that class); NaN where the class is absent.
        budget: number of cases to pick.
        rng: the seeded generator (the selection is deterministic for a seed).
        beta: the power.
    """
    s = np.asarray(class_scores, dtype=np.float64)
    n, k = s.shape
    if budget < 0 or budget > n:
        raise ValueError(f"budget {budget} must be between 0 and the pool size {n}")
    log_s = np.log(np.clip(np.nan_to_num(s, nan=0.0), 1e-12, None))
    remaining = np.ones(n, dtype=bool)
    picks: list[int] = []
    for step in range(budget):
        c = step % max(k, 1)
        gumbel = rng.gumbel(size=n)
        value = np.where(remaining, beta * log_s[:, c] + gumbel, -np.inf)
        best = int(np.argmax(value))
        picks.append(best)
        remaining[best] = False
    return picks
