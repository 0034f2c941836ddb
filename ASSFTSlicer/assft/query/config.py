"""Configuration of a ranking, as dataclasses serialised to JSON (method.md's defaults).

Every part of the method is a field, so that a benchmark can switch it off and compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from assft.errors import BadInputError
from assft.query.strategies import GapEstimator, Strategy

__all__ = ["ASDConfig", "DKDConfig", "GapEstimator", "QueryConfig", "Strategy"]


@dataclass
class DKDConfig:
    """Diversified Knowledge Divergence.

    Attributes:
        gap: `auto` (bn when the encoder has BatchNorm, else prototype), `bn` or `prototype`.
        drift: add 1 - cos(z0, z_t) once a fine-tuned model exists.
        prototypes: K for the prototype estimator (None: max(3, 10% of the pool)).
    """

    gap: GapEstimator = GapEstimator.AUTO
    drift: bool = True
    prototypes: int | None = None


@dataclass
class ASDConfig:
    """Anatomical Segmentation Difficulty: ROI threshold tau and dilation radius r."""

    tau: float = 0.5
    radius: int = 2


@dataclass
class QueryConfig:
    """One ranking's settings. The defaults here are the only ones: the command line, the
    workspace's settings and the Slicer module start from them.

    Attributes:
        strategy: which strategy ranks the pool (a name registered in ``query/strategies.py``).
        budget: cases to select.
        views: test-time views (1 = identity only, up to 4 = identity + 3 axis flips).
        weight: w in S = w q(KG) + (1 - w) q(ASD).
        lambda_div: weight of the diversity term in greedy selection (0: off).
        seed: seed of every random choice.
        mc_samples: MC-dropout samples of the `epistemic` strategy.
        mc_dropout: dropout probability used for MC sampling.
        clasp_beta: power of ClaSP PE's power sampling in round 0 (grows with rounds).
    """

    WORKSPACE_SETTINGS: ClassVar[dict[str, str]] = {"budget": "budget", "strategy": "strategy"}
    """Keys of the workspace's settings (``assft.json``) that set fields here: key -> field."""

    strategy: Strategy = Strategy("attsq")
    budget: int = 5
    views: int = 4
    weight: float = 0.5
    lambda_div: float = 1.0
    seed: int = 0
    mc_samples: int = 5
    mc_dropout: float = 0.2
    clasp_beta: float = 1.0
    dkd: DKDConfig = field(default_factory=DKDConfig)
    asd: ASDConfig = field(default_factory=ASDConfig)

    def __post_init__(self) -> None:
        self.strategy = _enum(Strategy, self.strategy, "strategy")
        if isinstance(self.dkd, dict):
            self.dkd = _from_dict(DKDConfig, self.dkd, "dkd")
        if isinstance(self.asd, dict):
            self.asd = _from_dict(ASDConfig, self.asd, "asd")
        self.dkd.gap = _enum(GapEstimator, self.dkd.gap, "dkd.gap")
        if self.budget < 1:
            raise BadInputError(f"budget must be at least 1, got {self.budget}")
        if not 1 <= self.views <= 4:
            raise BadInputError(f"views must be between 1 and 4, got {self.views}")
        if not 0.0 <= self.weight <= 1.0:
            raise BadInputError(f"weight must be between 0 and 1, got {self.weight}")
        if self.mc_samples < 2:
            raise BadInputError(f"mc_samples must be at least 2, got {self.mc_samples}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their string values)."""
        return json.loads(json.dumps(asdict(self), default=lambda v: v.value))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryConfig:
        """Build from a dict such as :meth:`to_dict` gives; unknown keys are refused."""
        return _from_dict(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> QueryConfig:
        """Read a JSON file written by :meth:`to_dict`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(f"cannot read the configuration: {error}", path) from error
        return cls.from_dict(data)


def _enum(kind: type[Enum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise BadInputError(f"{name} must be one of {choices}, got {value!r}") from None


def _from_dict(kind: type, data: dict[str, Any], name: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(f"unknown {name} field(s) {unknown}; known: {sorted(known)}")
    return kind(**data)
