"""Query strategies behind one interface, chosen by name (ATTSQ and the baselines of method.md).

A strategy sees only :class:`PoolStatistics` (arrays per case) and returns a
:class:`QueryResult`; it knows nothing of models or files.

This module is the one list of strategies: each implementation registers itself with
:func:`register_strategy` (its name, a title for user interfaces and what it needs), and the
rest derives from :data:`STRATEGIES`: the :class:`Strategy` names that :class:`QueryConfig`
accepts, the command line's choices, the benchmark's grid and the Slicer module's combo box.
Adding a strategy is one decorated function here (and its test). The module imports numpy and
the numpy-only metrics, never torch, so the Slicer module can list the strategies at load time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from assft.errors import BadInputError
from assft.metrics import (
    GreedySelection,
    acquisition_distance,
    greedy_diverse_selection,
    k_center_greedy,
    pool_mean_gap,
    power_sampling_order,
    prototype_knowledge_gap,
    rank_normalise,
    representation_drift,
)
from assft.metrics.clustering import kmeans

if TYPE_CHECKING:
    # The config imports this module (for Strategy), so it is imported here for types only.
    from assft.query.config import QueryConfig


class GapEstimator(str, Enum):
    """Knowledge-gap estimators of DKD."""

    AUTO = "auto"
    BN = "bn"
    PROTOTYPE = "prototype"
    EVIDENCE = "evidence"


EVIDENCE_SPREAD = 0.15
"""`auto` uses the `evidence` gap when the evidence scans' Dice under the current model differ
by at least this much: the model handles parts of the archive differently, and the labels say
which. Below it (one acquisition: the scans differ as subjects do) it uses `bn`. The evidence
scans are the held-out ones, and the labeled ones while the current model is the pretrained
one (a fine-tuned model has trained on them: its Dice there says nothing of the rest)."""


class DiversitySpace(str, Enum):
    """Where the diversity term measures how far apart cases lie: `acquisition` (the
    pretrained model's acquisition descriptors a0, :mod:`assft.metrics.acquisition`: a batch
    that covers the archive's scanners) or `embedding` (its deep pooled embeddings z0, the
    method's first definition). Measured on the two lab archives, a scan's nearest neighbour
    by a0 shares its acquisition for 40 and 30 of 40 scans, by z0 for 34 and 23."""

    ACQUISITION = "acquisition"
    EMBEDDING = "embedding"


class DiversityScale(str, Enum):
    """How the diversity term of ATTSQ and DKD measures distance
    (:func:`assft.metrics.greedy_diverse_selection`): `typical` (the distance over the pool's
    spread, capped at 1; deep embeddings are centred on the pool first) or `rank` (distances
    rank-normalised: the method's first definition)."""

    TYPICAL = "typical"
    RANK = "rank"


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
        a0: acquisition descriptors under f0, ``(N, C)``; None where not computed.
        labeled_a0: those of the cases already labeled, ``(L, C)``.
        evidence_a0: a0 of the labeled and held-out scans, ``(E, C)``.
        evidence_failure: 1 - the current model's Dice on each of them, ``(E,)``.
        view_entropy: mean over the test-time views of each view's own foreground entropy.
        energy_variance: variance over the views of each view's mean free energy.
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
    a0: np.ndarray | None = None
    labeled_a0: np.ndarray | None = None
    evidence_a0: np.ndarray | None = None
    evidence_failure: np.ndarray | None = None
    view_entropy: np.ndarray | None = None
    energy_variance: np.ndarray | None = None

    def evidence_spread(self) -> float:
        """How much the current model's failure differs across the evidence scans (0 without)."""
        if self.evidence_failure is None or len(self.evidence_failure) < 2 or self.a0 is None:
            return 0.0
        return float(np.ptp(self.evidence_failure))

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


StrategyFunction = Callable[[PoolStatistics, "QueryConfig", np.random.Generator], QueryResult]
"""A strategy: the pool's statistics, the config and the seeded generator -> its verdict."""


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy.

    Attributes:
        name: its name on the command line, in configs and in ranking documents.
        title: a short human title for user interfaces (the Slicer module's combo box).
        run: the implementation.
        needs_head: it needs a segmentation head for the workspace's labels (ASD, entropy);
            :func:`run_strategy` refuses it on a cold start.
        needs_mc_dropout: it needs the MC-dropout passes (``PoolStatistics.epistemic``), which
            the ranking then runs.
        baseline: a published single-criterion baseline that the label-efficiency benchmark
            compares ATTSQ with (random, the control, and DKD and ASD, ATTSQ's own terms, are
            compared otherwise).
        uses_gap: it reads DKD's knowledge gap (the ranking then measures the `evidence` gap's
            scans where the estimator may use it).
    """

    name: str
    title: str
    run: StrategyFunction
    needs_head: bool = False
    needs_mc_dropout: bool = False
    baseline: bool = False
    uses_gap: bool = False


_REGISTRY: dict[str, StrategyInfo] = {}
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def register_strategy(
    name: str,
    title: str,
    *,
    needs_head: bool = False,
    needs_mc_dropout: bool = False,
    baseline: bool = False,
    uses_gap: bool = False,
) -> Callable[[StrategyFunction], StrategyFunction]:
    """Register the decorated function as the strategy ``name`` (see :class:`StrategyInfo`).

    Registration order is the order of every list of strategies (the Slicer combo box's too).

    Raises:
        ValueError: a name that is taken or not lowercase letters, digits, ``_`` and ``-``.
        RuntimeError: registering after :class:`Strategy` was built (at the end of this module).
    """

    def register(run: StrategyFunction) -> StrategyFunction:
        if _SEALED:
            raise RuntimeError(
                f"strategy {name!r} registered after the Strategy names were built: "
                "register strategies in assft/query/strategies.py"
            )
        if not _NAME.fullmatch(name):
            raise ValueError(f"strategy name {name!r} must be lowercase letters, digits, _ or -")
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice")
        _REGISTRY[name] = StrategyInfo(
            name, title, run, needs_head, needs_mc_dropout, baseline, uses_gap
        )
        return run

    return register


_SEALED = False  # set once the Strategy names are built, at the end of this module


def knowledge_gap(stats: PoolStatistics, config: QueryConfig) -> tuple[np.ndarray, dict]:
    """KG_i with the estimator the config names (method.md, DKD; `evidence` is this project's:
    the current model's failure on the labeled or held-out scan nearest by acquisition)."""
    estimator = config.dkd.gap
    notes: dict[str, object] = {}
    if estimator == GapEstimator.EVIDENCE and stats.evidence_spread() <= 0.0:
        raise BadInputError(
            "dkd.gap is 'evidence' but there are not two labeled or held-out scans with "
            "different Dice to read it from (use 'auto')"
        )
    if estimator == GapEstimator.EVIDENCE or (
        estimator == GapEstimator.AUTO and stats.evidence_spread() >= EVIDENCE_SPREAD
    ):
        assert stats.a0 is not None and stats.evidence_a0 is not None
        assert stats.evidence_failure is not None
        gap = evidence_gap(stats.a0, stats.evidence_a0, stats.evidence_failure)
        notes["gap_estimator"] = "evidence"
        if config.dkd.drift and stats.zt is not None:
            gap = gap + representation_drift(stats.z0, stats.zt)
            notes["drift"] = True
        return gap, notes
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


def evidence_gap(a0: np.ndarray, evidence_a0: np.ndarray, failure: np.ndarray) -> np.ndarray:
    """The `evidence` gap: the current model's failure (1 - Dice) on the labeled or held-out
    scan nearest to each case by acquisition (:func:`acquisition_distance`)."""
    nearest = acquisition_distance(a0, evidence_a0).argmin(axis=1)
    return np.asarray(failure, dtype=np.float64)[nearest]


def _top(score: np.ndarray, budget: int) -> list[int]:
    return [int(i) for i in np.argsort(-score, kind="stable")[:budget]]


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def _head(stats: PoolStatistics) -> np.ndarray:
    # run_strategy refuses a needs_head strategy without one; this narrows the type.
    assert stats.asd is not None
    return stats.asd


@register_strategy("attsq", "ATTSQ (knowledge gap + difficulty)", uses_gap=True)
def query_attsq(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """ATTSQ: S = w q(KG) + (1 - w) q(ASD), then diverse greedy selection.

    Cold start (no head): S = q(KG).
    """
    score, gap, notes = _attsq_score(stats, config)
    greedy = _diverse(score, stats, config)
    return QueryResult(greedy.picks, score, greedy.objective, greedy.diversity, gap, notes)


def _attsq_score(stats: PoolStatistics, config: QueryConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """S = w q(KG) + (1 - w) q(ASD) (cold start: q(KG)), the gap and the notes."""
    gap, notes = knowledge_gap(stats, config)
    if stats.asd is None:
        notes["cold_start"] = True
        return rank_normalise(gap), gap, notes
    score = config.weight * rank_normalise(gap) + (1 - config.weight) * rank_normalise(stats.asd)
    return score, gap, notes


def _diverse(score: np.ndarray, stats: PoolStatistics, config: QueryConfig) -> GreedySelection:
    """The greedy diverse batch, in the space the config names (z0 where a0 is missing)."""
    if config.diversity_on == DiversitySpace.ACQUISITION and stats.a0 is not None:
        rows, labeled, metric = stats.a0, stats.labeled_a0, "rms"
    else:
        rows, labeled, metric = stats.z0, stats.labeled_z0, "cosine"
    return greedy_diverse_selection(
        score,
        rows,
        config.budget,
        labeled_z0=labeled,
        lambda_div=config.lambda_div,
        scale=config.diversity.value,
        metric=metric,
    )


@register_strategy("attsq-power", "ATTSQ, power sampling", uses_gap=True)
def query_attsq_power(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """ATTSQ's score S with power sampling instead of the greedy diverse batch: top B of
    ``beta log S + Gumbel noise``, i.e. B cases drawn without replacement with probability
    proportional to S^beta (Kool et al., "Stochastic beams and where to find them", ICML 2019).
    ``beta = power_beta * (1 + round)``: the noise decays as rounds go by, after ClaSP PE
    (Lueth et al., TMLR 2026), whose power sampling is what beats strong random baselines in
    the neutral 3D benchmarks. The noise spreads a batch where a deterministic top B would take
    near-duplicates."""
    score, gap, notes = _attsq_score(stats, config)
    beta = config.power_beta * (1 + stats.round)
    value = beta * np.log(np.clip(score, 1e-6, None)) + rng.gumbel(size=score.size)
    notes["beta"] = beta
    return QueryResult(_top(value, config.budget), score, value, _nan(stats.size), gap, notes)


@register_strategy("asfosda", "Per-view entropy, energy and prototypes", needs_head=True)
def query_asfosda(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """The signals of the first author's later source-free work (ASFOSDA), as the issue names
    them: the entropy of each test-time view's own prediction (averaged over the views), the
    variance of the free energy over the views (how much the views disagree in how familiar
    the scan is), and the prototype discrepancy to the K cases the pretrained model is surest
    of; S = the mean of their rank-normalised values, then ATTSQ's diverse greedy batch."""
    if stats.view_entropy is None or stats.energy_variance is None or stats.asd0 is None:
        raise BadInputError(
            "strategy 'asfosda' needs the per-view statistics of a model with a segmentation head"
        )
    prototype, prototypes = prototype_knowledge_gap(stats.z0, stats.asd0, config.dkd.prototypes)
    score = (
        rank_normalise(stats.view_entropy)
        + rank_normalise(stats.energy_variance)
        + rank_normalise(prototype)
    ) / 3.0
    greedy = _diverse(score, stats, config)
    notes: dict[str, object] = {"prototypes": [int(i) for i in prototypes]}
    return QueryResult(greedy.picks, score, greedy.objective, greedy.diversity, prototype, notes)


@register_strategy("typicality", "Typical cases (k-means)", baseline=True)
def query_typicality(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """Label-free typicality: k-means with k = labeled + budget on the centred pretrained
    embeddings, then the case nearest the centre of each part that holds no labeled case,
    the largest part first (after TypiClust: Hacohen et al., "Active learning on a budget",
    ICML 2022, the strong cold-start baseline of recent benchmarks)."""
    n, labeled = stats.size, len(stats.labeled_z0)
    everything = np.concatenate([stats.z0, stats.labeled_z0]) if labeled else stats.z0
    z = everything - stats.z0.mean(axis=0, keepdims=True)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    clusters = kmeans(z, min(len(z), labeled + config.budget), seed=config.seed)
    pool_labels = clusters.labels[:n]
    covered = set(clusters.labels[n:].tolist())
    closeness = -((z[:n] - clusters.centres[pool_labels]) ** 2).sum(axis=1)
    order = sorted(range(clusters.k), key=lambda j: (j in covered, j))  # uncovered, largest first
    picks: list[int] = []
    while len(picks) < config.budget:
        for part in order:
            members = [i for i in np.flatnonzero(pool_labels == part) if i not in picks]
            if members and len(picks) < config.budget:
                picks.append(int(max(members, key=lambda i: (closeness[i], -i))))
    return QueryResult(
        picks,
        closeness,
        closeness,
        _nan(n),
        _nan(n),
        {"parts": clusters.k, "covered": len(covered)},
    )


@register_strategy("dkd", "Knowledge gap only (DKD)", uses_gap=True)
def query_dkd(stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator) -> QueryResult:
    """DKD alone: S = q(KG) with diverse greedy selection."""
    gap, notes = knowledge_gap(stats, config)
    score = rank_normalise(gap)
    greedy = _diverse(score, stats, config)
    return QueryResult(greedy.picks, score, greedy.objective, greedy.diversity, gap, notes)


@register_strategy("asd", "Difficulty only (ASD)", needs_head=True)
def query_asd(stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator) -> QueryResult:
    """ASD alone: the top cases by ASD, no diversity term."""
    score = rank_normalise(_head(stats))
    n = stats.size
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


@register_strategy("entropy", "Entropy", needs_head=True, baseline=True)
def query_entropy(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """Mean voxel entropy of the whole volume."""
    n = stats.size
    score = np.asarray(stats.mean_entropy, dtype=np.float64)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


@register_strategy("epistemic", "MC dropout", needs_head=True, needs_mc_dropout=True, baseline=True)
def query_epistemic(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """MC-dropout mean predictive entropy (what MONAI Label ships)."""
    assert stats.epistemic is not None  # run_strategy checks needs_mc_dropout
    n = stats.size
    score = np.asarray(stats.epistemic, dtype=np.float64)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


@register_strategy("coreset", "Core-set", baseline=True)
def query_coreset(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """k-center greedy on the pretrained embeddings."""
    greedy = k_center_greedy(stats.z0, config.budget, labeled_z=stats.labeled_z0)
    return QueryResult(
        greedy.picks, greedy.diversity, greedy.objective, greedy.diversity, _nan(stats.size)
    )


@register_strategy("clasp", "ClaSP PE", needs_head=True, baseline=True)
def query_clasp(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """ClaSP PE: class-stratified predictive entropy with scheduled power sampling."""
    n = stats.size
    beta = config.clasp_beta * (1 + stats.round)
    picks = power_sampling_order(stats.class_entropy, config.budget, rng, beta=beta)
    with np.errstate(all="ignore"):
        score = np.nan_to_num(np.nanmean(stats.class_entropy, axis=1), nan=0.0)
    return QueryResult(picks, score, score, _nan(n), _nan(n), {"beta": beta})


@register_strategy("random", "Random")
def query_random(
    stats: PoolStatistics, config: QueryConfig, rng: np.random.Generator
) -> QueryResult:
    """Uniformly random cases (seeded)."""
    n = stats.size
    score = rng.random(n)
    return QueryResult(_top(score, config.budget), score, score, _nan(n), _nan(n))


# Every strategy is registered above this line; what follows derives from the registry.

STRATEGIES: Mapping[str, StrategyInfo] = MappingProxyType(_REGISTRY)
"""Every strategy by name, in registration order (read-only)."""

if TYPE_CHECKING:

    class Strategy(str, Enum):
        """A registered strategy's name; the members are built from :data:`STRATEGIES`."""

else:
    # A str enum (its values go to JSON) with one member per registered strategy: ATTSQ = "attsq".
    # Member names are stable: the Slicer module's parameter node stores them.
    Strategy = Enum(
        "Strategy",
        [(name.upper().replace("-", "_"), name) for name in _REGISTRY],
        type=str,
        module=__name__,
    )
    Strategy.__doc__ = "A registered strategy's name; the members are built from STRATEGIES."
_SEALED = True


def strategy_info(name: str) -> StrategyInfo:
    """The registered strategy of a name or :class:`Strategy` member.

    Raises:
        BadInputError: no strategy has that name (the message lists the names).
    """
    # By value, so that a plain name and a Strategy member look up alike.
    key = name.value if isinstance(name, Enum) else name
    if key not in STRATEGIES:
        raise BadInputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {key!r}")
    return STRATEGIES[key]


def run_strategy(stats: PoolStatistics, config: QueryConfig) -> QueryResult:
    """Rank the pool with the strategy the config names (deterministic for its seed).

    Raises:
        BadInputError: a budget larger than the pool, or a strategy that needs a segmentation
            head the model does not have yet.
        ValueError: a strategy that needs MC-dropout statistics the caller did not gather.
    """
    if config.budget > stats.size:
        raise BadInputError(
            f"budget {config.budget} is larger than the unlabeled pool ({stats.size} cases)"
        )
    info = strategy_info(config.strategy)
    if info.needs_head and stats.asd is None:
        *others, last = [f"'{s.name}'" for s in STRATEGIES.values() if not s.needs_head]
        without = f"{', '.join(others)} or {last}" if others else last
        raise BadInputError(
            f"strategy '{info.name}' needs a segmentation head for the workspace's labels; "
            f"the model has none yet (rank with {without}, then fine-tune)"
        )
    if info.needs_mc_dropout and stats.epistemic is None:
        raise ValueError(f"the {info.name} strategy needs MC-dropout statistics")
    rng = np.random.default_rng(config.seed)
    return info.run(stats, config, rng)
