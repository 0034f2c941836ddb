"""Configuration of a ranking, as dataclasses serialised to JSON (method.md's defaults).

Every part of the method is a field, so that a benchmark can switch it off and compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from assft.query.strategies import DiversityScale, DiversitySpace, GapEstimator, Strategy
from assft.validation import (
    MAX_MC_SAMPLES,
    MAX_PROTOTYPES,
    MAX_RADIUS,
    MAX_SEED,
    JsonConfig,
    setting,
    validate,
)

__all__ = [
    "ASDConfig",
    "DKDConfig",
    "DiversityScale",
    "DiversitySpace",
    "GapEstimator",
    "QueryConfig",
    "Strategy",
]


@dataclass
class DKDConfig:
    """Diversified Knowledge Divergence.

    Attributes:
        gap: `auto` (bn when the encoder has BatchNorm, else prototype), `bn` or `prototype`.
        drift: add 1 - cos(z0, z_t) once a fine-tuned model exists.
        prototypes: K for the prototype estimator (None: max(3, 10% of the pool)).
    """

    gap: GapEstimator = setting(GapEstimator.AUTO)
    drift: bool = setting(True)
    prototypes: int | None = setting(None, ge=1, cap=MAX_PROTOTYPES)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ASDConfig:
    """Anatomical Segmentation Difficulty: ROI threshold tau and dilation radius r."""

    tau: float = setting(0.5, ge=0.0, le=1.0)
    radius: int = setting(2, ge=0, le=MAX_RADIUS)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class QueryConfig(JsonConfig):
    """One ranking's settings. The defaults here are the only ones: the command line, the
    workspace's settings and the Slicer module start from them.

    Each field declares its type (the annotation) and its range (:func:`assft.validation.setting`);
    every value is checked when the config is made (a float must also be finite), and a config
    made from a dict refuses unknown keys.

    Attributes:
        strategy: which strategy ranks the pool (a name registered in ``query/strategies.py``).
        budget: cases to select.
        views: test-time views (1 = identity only, up to 4 = identity + 3 axis flips).
        weight: w in S = w q(KG) + (1 - w) q(ASD).
        lambda_div: weight of the diversity term in greedy selection (0: off).
        diversity: how the diversity term measures distance: `typical` (the distance over the
            pool's spread: lambda_div means the same in any pool) or `rank` (the first
            definition: rank-normalised distances).
        diversity_on: where the diversity term measures distance: `acquisition` (the
            pretrained model's acquisition descriptors: the batch covers the scanners) or
            `embedding` (its deep embeddings z0, the first definition).
        seed: seed of every random choice.
        mc_samples: MC-dropout samples of the `epistemic` strategy.
        mc_dropout: dropout probability used for MC sampling.
        clasp_beta: power of ClaSP PE's power sampling in round 0 (grows with rounds).
        power_beta: power of ATTSQ's power sampling (`attsq-power`) in round 0 (grows with
            rounds).
    """

    WORKSPACE_SETTINGS: ClassVar[dict[str, str]] = {"budget": "budget", "strategy": "strategy"}
    """Keys of the workspace's settings (``assft.json``) that set fields here: key -> field."""

    strategy: Strategy = setting(Strategy("attsq"))
    budget: int = setting(5, ge=1)
    views: int = setting(4, ge=1, le=4)
    weight: float = setting(0.5, ge=0.0, le=1.0)
    lambda_div: float = setting(1.0, ge=0.0)
    diversity: DiversityScale = setting(DiversityScale.TYPICAL)
    diversity_on: DiversitySpace = setting(DiversitySpace.ACQUISITION)
    seed: int = setting(0, ge=0, le=MAX_SEED)
    mc_samples: int = setting(5, ge=2, cap=MAX_MC_SAMPLES)
    mc_dropout: float = setting(0.2, ge=0.0, lt=1.0)
    clasp_beta: float = setting(1.0, ge=0.0)
    power_beta: float = setting(1.0, ge=0.0)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    asd: ASDConfig = field(default_factory=ASDConfig)

    def __post_init__(self) -> None:
        validate(self)
