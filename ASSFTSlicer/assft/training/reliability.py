"""Which unlabeled cases are reliable enough to learn from (SSFT step 2)."""

from __future__ import annotations

import numpy as np

from assft.metrics import cosine_distance, rank_normalise


def semantic_distance(z_unlabeled: np.ndarray, z_labeled: np.ndarray) -> np.ndarray:
    """d_u = min over labeled l of (1 - cos(z_u, z_l))."""
    if len(z_labeled) == 0:
        return np.ones(len(z_unlabeled))
    return cosine_distance(z_unlabeled, z_labeled).min(axis=1)


def select_reliable_cases(
    confidence: np.ndarray, distance: np.ndarray, *, rho: float = 0.3, tau_c: float = 0.9
) -> list[int]:
    """The reliable set R: the top ``rho`` of the pool by q(c_u) - q(d_u), among c_u >= tau_c.

    Rank normalisation runs over the whole pool; the set holds ``round(rho * N)`` cases at
    most (at least one when any case passes the threshold and rho > 0).

    Returns:
        Indices of the reliable cases, most reliable first.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    n = confidence.size
    if n == 0 or rho <= 0:
        return []
    reliability = rank_normalise(confidence) - rank_normalise(
        np.asarray(distance, dtype=np.float64)
    )
    size = max(1, int(round(rho * n)))
    order = np.argsort(-reliability, kind="stable")
    eligible = [int(i) for i in order if confidence[i] >= tau_c]
    return eligible[:size]
