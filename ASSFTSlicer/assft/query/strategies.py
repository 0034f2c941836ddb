"""Query strategies behind one interface, chosen by name (ATTSQ and the baselines of method.md).

A strategy sees only :class:`PoolStatistics` (arrays per case) and returns a
:class:`QueryResult`; it knows nothing of models or files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from assft.query.config import GapEstimator, QueryConfig, Strategy
from assft.errors import BadInputError
from assft.metrics import (
    greedy_diverse_selection,
    k_center_greedy,
    pool_mean_gap,
    power_sampling_order,
    prototype_knowledge_gap,
    rank_normalise,
    representation_drift,
)


@dataclass
class PoolStatistics:
    """Per-case statistics of the unlabeled pool, all from the same forward passes.

    Attributes:
        z0: embeddings under the frozen pretrained model f0, ``(N, D)``.
        labeled_z0: embeddings under f0 of the cases already labeled, ``(L, D)``.
        asd: ASD under the current model, ``(N,)``; None when the model has no head yet.
        asd0: ASD under f0 (the prototype estimator's "known" cases); None without a head.
        mean_entropy: whole-volume mean entropy under the current model, ``(N,)``.
        class_entropy: ``(N, K)`` mean entropy over the voxels predicted as each label
            (NaN where the label is absent).
        kg_bn: the `bn` knowledge gap under f0, ``(N,)``; None without BatchNorm.
        zt: embeddings under the current fine-tuned model; None while it is f0.
        epistemic: MC-dropout mean predictive entropy, ``(N,)``; only for `epistemic`.
        round: fine-tuning rounds so far (ClaSP PE's schedule).
    """

    z0: np.ndarray
    labeled_z0: np.ndarray
    asd: np.ndarray | None
    asd0: np.ndarray | None
    mean_entropy: np.ndarray
    class_entropy: np.ndarray
    kg_bn: np.ndarray | None = None
    zt: np.ndarray | None = None
    epistemic: np.ndarray | None = None
    round: int = 0

    @property
    def size(self) -> int:
        return int(self.z0.shape[0])


@dataclass
class QueryResult:
    """A strategy's verdict on the pool.

    Attributes:
        picks: the selected cases (indices), in order.
        score: the strategy's own score per case (S_i for ATTSQ).
        objective: what ordered the picks and orders the rest (higher first).
        diversity: D_i per case (NaN where the strategy has no diversity term).
        knowledge_gap: KG_i per case (NaN where not computed).
        notes: how it was computed (estimator, cold start...).
    """

    picks: list[int]
    score: np.ndarray
    objective: np.ndarray
    diversity: np.ndarray
    knowledge_gap: np.ndarray
    notes: dict[str, object] = field(default_factory=dict)

    def order(self) -> list[int]:
        """Every case: the picks first, then the rest by objective (ties by index)."""
        picked = set(self.picks)
        rest = [i for i in np.argsort(-self.objective, kind="stable") if i not in picked]
        return list(self.picks) + [int(i) for i in rest]


def knowledge_gap(stats: PoolStatistics, config: QueryConfig) -> tuple[np.ndarray, dict]:
    """KG_i with the estimator the config names (method.md, DKD)."""
    estimator = config.dkd.gap
    notes: dict[str, object] = {}
    if estimator == GapEstimator.BN and stats.kg_bn is None:
        raise BadInputError("dkd.gap is 'bn' but the model's encoder has no BatchNorm layers")
    if estimator == GapEstimator.PROTOTYPE and stats.asd0 is None:
        raise BadInputError(
            "dkd.gap is 'prototype' but the pretrained model has no segmentation head "
            "for these labels (use 'auto' or 'bn')"
        )
    if estimator in (GapEstimator.AUTO, GapEstimator.BN) and stats.kg_bn is not None:
        gap = np.asarray(stats.kg_bn, dtype=np.float64).copy()
        notes["gap_estimator"] = "bn"
    elif stats.asd0 is not None:
        gap, prototypes = prototype_knowledge_gap(stats.z0, stats.asd0, config.dkd.prototypes)
        notes["gap_estimator"] = "prototype"
        notes["prototypes"] = [int(i) for i in prototypes]
    else:
        gap = pool_mean_gap(stats.z0)
        notes["gap_estimator"] = "pool-mean"
    if config.dkd.drift and stats.zt is not None:
        gap = gap + representation_drift(stats.z0, stats.zt)
        notes["drift"] = True
    return gap, notes


def _top(score: np.ndarray, budget: int) -> list[int]:
    return [int(i) for i in np.argsort(-score, kind="stable")[:budget]]


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _require_head(stats: PoolStatistics, name: str) -> np.ndarray:
    if stats.asd is None:
        raise BadInputError(
            f"strategy '{name}' needs a segmentation head for the workspace's labels; "
            "the model has none yet (rank with 'attsq', 'dkd', 'coreset' or 'random', "
            "then fine-tune)"
        )
    return stats.asd


def query_attsq(stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator) -> QueryResult:
    """ATTSQ: S = w q(KG) + (1 - w) q(ASD), then diverse greedy selection.

    Cold start (no head): S = q(KG).
    """
    gap, notes = knowledge_gap(stats, config)
    if stats.asd is None:
        score = rank_normalise(gap)
        notes["cold_start"] = True
    else:
        score = config.weight * rank_normalise(gap) + (1 - config.weight) * rank_normalise(
            stats.asd
        )
    greedy = greedy_diverse_selection(
        score, stats.z0, config.budget, labeled_z0=stats.labeled_z0, lambda_div=config.lambda_div
    )
    return QueryResult(greedy.picks, score, greedy.objective, greedy.diversity, gap, notes)


def query_dkd(stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator) -> QueryResult:
    """DKD alone: S = q(KG) with diverse greedy selection."""
    gap, notes = knowledge_gap(stats, config)
    score = rank_normalise(gap)
    greedy = greedy_diverse_selection(
        score, stats.z0, config.budget, labeled_z0=stats.labeled_z0, lambda_div=config.lambda_div
    )
    return QueryResult(greedy.picks, score, greedy.objective, greedy.diversity, gap, notes)


def query_asd(stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator) -> QueryResult:
    """ASD alone: the top cases by ASD, no diversity term."""
    score = rank_normalise(_require_head(stats, "asd"))
    n = stats.size
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


def query_random(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """Uniformly random cases (seeded)."""
    n = stats.size
    score = rng.random(n)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


def query_entropy(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """Mean voxel entropy of the whole volume."""
    _require_head(stats, "entropy")
    n = stats.size
    score = np.asarray(stats.mean_entropy, dtype=np.float64)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


def query_epistemic(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """MC-dropout mean predictive entropy (what MONAI Label ships)."""
    _require_head(stats, "epistemic")
    if stats.epistemic is None:
        raise ValueError("the epistemic strategy needs MC-dropout statistics")
    n = stats.size
    score = np.asarray(stats.epistemic, dtype=np.float64)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


def query_coreset(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """k-center greedy on the pretrained embeddings."""
    greedy = k_center_greedy(stats.z0, config.budget, labeled_z=stats.labeled_z0)
    return QueryResult(
        greedy.picks, greedy.diversity, greedy.objective, greedy.diversity, _nan(stats.size)
    )


def query_clasp(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """ClaSP PE: class-stratified predictive entropy with scheduled power sampling."""
    _require_head(stats, "clasp")
    n = stats.size
    beta = config.clasp_beta * (1 + stats.round)
    picks = power_sampling_order(stats.class_entropy, config.budget, rng, beta=beta)
    with np.errstate(all="ignore"):
        score = np.nan_to_num(np.nanmean(stats.class_entropy, axis=1), nan=0.0)
    return QueryResult(picks, score, score, _nan(n), _nan(n), {"beta": beta})


STRATEGIES: dict[Strategy, Callable[[PoolStatistics, QueryConfig, np.random.Generator], QueryResult]] = {
    Strategy.ATTSQ: query_attsq,
    Strategy.DKD: query_dkd,
    Strategy.ASD: query_asd,
    Strategy.RANDOM: query_random,
    Strategy.ENTROPY: query_entropy,
    Strategy.EPISTEMIC: query_epistemic,
    Strategy.CORESET: query_coreset,
    Strategy.CLASP: query_clasp,
}


def run_strategy(stats: PoolStatistics, config: QueryConfig) -> QueryResult:
    """Rank the pool with the strategy the config names (deterministic for its seed)."""
    if config.budget > stats.size:
        raise BadInputError(
            f"budget {config.budget} is larger than the unlabeled pool ({stats.size} cases)"
        )
    rng = np.random.default_rng(config.seed)
    return STRATEGIES[config.strategy](stats, config, rng)
