"""Knowledge-gap estimators of Diversified Knowledge Divergence (DKD).

Each estimates, without any source data, how far a target case lies from what the pretrained
model already knows (method.md, "Diversified Knowledge Divergence").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_VAR_EPS = 1e-5


def gaussian_symmetric_kl(
    mean_a: np.ndarray, var_a: np.ndarray, mean_b: np.ndarray, var_b: np.ndarray
) -> np.ndarray:
    """Symmetric KL divergence (Jeffreys) between univariate Gaussians, elementwise.

    ``KL(a||b) + KL(b||a) = ((var_a + d^2) / var_b + (var_b + d^2) / var_a) / 2 - 1`` with
    ``d = mean_a - mean_b``. Variances get a small epsilon, as BatchNorm does.
    """
    var_a = np.asarray(var_a, dtype=np.float64) + _VAR_EPS
    var_b = np.asarray(var_b, dtype=np.float64) + _VAR_EPS
    d2 = (np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)) ** 2
    return 0.5 * ((var_a + d2) / var_b + (var_b + d2) / var_a) - 1.0


def batchnorm_knowledge_gap(
    case_statistics: Sequence[tuple[np.ndarray, np.ndarray]],
    running_statistics: Sequence[tuple[np.ndarray, np.ndarray]],
) -> float:
    """The `bn` gap: a case's feature statistics against the pretrained BatchNorm statistics.

    The running mean and variance of the pretrained encoder's BatchNorm layers summarise the
    source domain's features. The gap is the symmetric KL divergence between the case's
    per-channel Gaussian and the running one, averaged over the channels of a layer, then
    over the layers (every layer weighs the same, whatever its width).

    Args:
        case_statistics: per layer, the (mean, variance) per channel of the layer's input
            over the case.
        running_statistics: per layer, the (running_mean, running_var) of the pretrained model.
    """
    if len(case_statistics) != len(running_statistics) or not case_statistics:
        raise ValueError(
            f"need the same, non-zero number of BatchNorm layers: case has {len(case_statistics)},"
            f" model has {len(running_statistics)}"
        )
    per_layer = [
        float(gaussian_symmetric_kl(m, v, rm, rv).mean())
        for (m, v), (rm, rv) in zip(case_statistics, running_statistics, strict=True)
    ]
    return float(np.mean(per_layer))


def _unit_rows(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    norms = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def prototype_count(pool_size: int) -> int:
    """K = max(3, 10% of the pool), never more than the pool."""
    return min(pool_size, max(3, math.ceil(0.1 * pool_size)))


def prototype_knowledge_gap(
    z0: np.ndarray, difficulty: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The `prototype` gap: distance to the cases the pretrained model is surest of.

    The K cases with the lowest ASD under the pretrained model stand for what it knows; a
    case's gap is its mean cosine distance to them.

    Args:
        z0: pretrained-model embeddings, ``(N, D)``.
        difficulty: ASD of each case under the pretrained model, ``(N,)``.
        k: number of prototypes (default :func:`prototype_count`).

    Returns:
        The gaps ``(N,)`` and the indices of the prototypes.
    """
    z0 = _unit_rows(z0)
    n = z0.shape[0]
    k = prototype_count(n) if k is None else min(k, n)
    prototypes = np.argsort(np.asarray(difficulty, dtype=np.float64), kind="stable")[:k]
    gap = (1.0 - z0 @ z0[prototypes].T).mean(axis=1)
    return gap, prototypes


def representation_drift(z0: np.ndarray, zt: np.ndarray) -> np.ndarray:
    """The `drift` term: 1 - cos(z0_i, zt_i), how far fine-tuning moved each case."""
    return 1.0 - (_unit_rows(z0) * _unit_rows(zt)).sum(axis=1)


def pool_mean_gap(z0: np.ndarray) -> np.ndarray:
    """Cold start without BatchNorm: 1 - cos(z0_i, mean of z0 over the pool)."""
    z0 = _unit_rows(z0)
    centre = _unit_rows(z0.mean(axis=0, keepdims=True))[0]
    return 1.0 - z0 @ centre
