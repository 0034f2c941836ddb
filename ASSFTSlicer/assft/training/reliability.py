"""Which unlabeled cases are reliable enough to learn from (SSFT step 2), and which hold the
model to what its parent knew (the anchor)."""

from __future__ import annotations

import numpy as np

from assft.metrics import acquisition_distance, cosine_distance, rank_normalise


def semantic_distance(z_unlabeled: np.ndarray, z_labeled: np.ndarray) -> np.ndarray:
    """d_u = min over labeled l of (1 - cos(z_u, z_l))."""
    if len(z_labeled) == 0:
        return np.ones(len(z_unlabeled))
    return cosine_distance(z_unlabeled, z_labeled).min(axis=1)


def _top_eligible(
    reliability: np.ndarray,
    confidence: np.ndarray,
    rho: float,
    tau_c: float,
    allowed: np.ndarray | None = None,
) -> list[int]:
    """The top ``round(rho * N)`` cases by ``reliability`` among those with confidence >= tau_c
    (and ``allowed``, where given), at least one when any case passes and rho > 0, most
    reliable first."""
    n = confidence.size
    if n == 0 or rho <= 0:
        return []
    size = max(1, int(round(rho * n)))
    order = np.argsort(-reliability, kind="stable")
    eligible = [
        int(i) for i in order if confidence[i] >= tau_c and (allowed is None or bool(allowed[i]))
    ]
    return eligible[:size]


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
    if confidence.size == 0:
        return []
    reliability = rank_normalise(confidence) - rank_normalise(
        np.asarray(distance, dtype=np.float64)
    )
    return _top_eligible(reliability, confidence, rho, tau_c)


def select_anchor_cases(
    confidence: np.ndarray,
    distance: np.ndarray,
    borne_out: np.ndarray,
    *,
    rho: float = 0.3,
    tau_c: float = 0.9,
) -> list[int]:
    """The anchor set A: what the parent knew, where a label showed it and no label says
    otherwise.

    Confidence and distance are the *parent's*, taken before any training step. A case is
    eligible when the parent is sure of it (c_u >= tau_c) and ``borne_out``: the labeled or
    held-out scan nearest to it (by acquisition) is one on which the parent did clearly better
    than on the scans the clinician had to label (``FinetuneConfig.anchor_margin``). The top
    ``rho`` of the pool by q(c_u) + q(d_u) among the eligible cases are kept: the surest,
    farthest from every labeled case. A confident parent can be
    confidently wrong on a new acquisition (on the sample T2 site the demo model is 92 % sure
    and scores Dice 0.19), so confidence alone never qualifies a case; near a labeled case the
    label is the better teacher.

    Returns:
        Indices of the anchor cases, most reliable first (none where no scan bore the parent
        out, as on a site the parent fails on everywhere).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.size == 0:
        return []
    reliability = rank_normalise(confidence) + rank_normalise(
        np.asarray(distance, dtype=np.float64)
    )
    return _top_eligible(reliability, confidence, rho, tau_c, np.asarray(borne_out, dtype=bool))


def nearest_borne_out(
    descriptors: np.ndarray, evidence: np.ndarray, borne_out: np.ndarray
) -> np.ndarray:
    """For each case (``descriptors``, (N, D)), whether its nearest evidence scan (``evidence``,
    (M, D), by :func:`acquisition_distance`) bore the parent out (``borne_out``, (M,))."""
    if len(evidence) == 0:
        return np.zeros(len(descriptors), dtype=bool)
    nearest = acquisition_distance(descriptors, evidence).argmin(axis=1)
    return np.asarray(borne_out, dtype=bool)[nearest]
