"""The ranking document: every case's place, scores and the reason a clinician reads.

:func:`build_document` turns a strategy's result over a scored pool into the document saved
under ``rankings/``; :func:`explain` says in a sentence why a case stands where it does.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from assft.metrics import rank_normalise
from assft.query.config import QueryConfig, Strategy
from assft.query.scoring import CaseScores
from assft.query.strategies import QueryResult


def _position(q: float, n: int) -> int:
    """1-based place from the top of a rank-normalised value q in a pool of n."""
    return int(round((1.0 - q) * (n - 1))) + 1 if n > 1 else 1


_GAP_STRATEGIES = ("attsq", "attsq-power", "dkd")
_ASD_STRATEGIES = ("attsq", "attsq-power", "asd")
_DIVERSE_STRATEGIES = ("attsq", "dkd", "asfosda")


def explain(
    strategy: Strategy,
    scores: CaseScores,
    *,
    q_gap: float,
    q_asd: float,
    diversity: float,
    pool_size: int,
    selected: bool,
    label_names: dict[int, str],
    label_values: list[int],
    has_head: bool,
) -> str:
    """Why a case stands where it does, as a sentence a clinician reads without the method.

    For example: "Far from the scans the model learned from (3rd of 28); the model is unsure
    inside the white matter; unlike anything labeled so far." Only what ranks the case high is
    said (the top third of the pool); the phrases per strategy name are extras, and a strategy
    without one gets the generic reason.
    """
    parts: list[str] = []
    n = pool_size
    top = max(1, math.ceil(n / 3))
    if scores.empty_roi and has_head:
        parts.append("the model finds no anatomy in it")
    if strategy == "random":
        parts.append("drawn at random" if selected else "not drawn")
    elif strategy == "entropy":
        parts.append(f"the model is unsure over the whole scan (entropy {scores.mean_entropy:.2f})")
    elif strategy == "epistemic":
        parts.append(f"the model's dropout samples disagree (entropy {scores.epistemic:.2f})")
    elif strategy == "clasp":
        parts.append("the model is unsure of a structure it rarely predicts")
    elif strategy == "typicality":
        parts.append("typical of a part of the pool no labeled scan covers" if selected else "")
    if strategy in _GAP_STRATEGIES and not math.isnan(q_gap):
        place = _position(q_gap, n)
        if place <= top:
            parts.append(f"far from the scans the model learned from ({_ordinal(place)} of {n})")
    if strategy in _ASD_STRATEGIES and has_head:
        place = _position(q_asd, n)
        hardest = hardest_structure(scores.asd_per_class, label_names, label_values)
        if place <= top and hardest:
            parts.append(f"the model is unsure inside the {hardest[0]}")
        elif place <= top:
            parts.append("the model is unsure inside the anatomy")
    if strategy in _DIVERSE_STRATEGIES and not math.isnan(diversity):
        if diversity >= 0.999:
            parts.append("unlike anything labeled so far")
        elif diversity < 0.25:
            parts.append("much like a scan already labeled or picked")
    elif strategy == "coreset" and selected:
        parts.append("the scan farthest from everything labeled or picked before it")
    parts = [p for p in parts if p]
    if not parts:
        parts.append("picked for its combined score" if selected else "ranked lower overall")
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def hardest_structure(
    per_class: dict[int, float], label_names: dict[int, str], label_values: list[int]
) -> tuple[str, float] | None:
    """The structure with the highest per-structure ASD, by name."""
    if not per_class:
        return None
    channel = max(per_class, key=lambda c: per_class[c])
    value = label_values[channel - 1] if channel - 1 < len(label_values) else channel
    return label_names.get(value, str(value)), per_class[channel]


def build_document(
    *,
    case_ids: list[str],
    scores: list[CaseScores],
    result: QueryResult,
    config: QueryConfig,
    model_version: str,
    has_head: bool,
    label_names: dict[int, str],
    label_values: list[int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The ranking document: model version, config and every case's scores and reason."""
    gap = result.knowledge_gap
    q_gap = rank_normalise(gap) if not np.isnan(gap).any() else np.full(len(gap), np.nan)
    asd = np.array([s.asd for s in scores])
    q_asd = rank_normalise(asd)
    div = result.diversity
    picked = set(result.picks)
    rows = []
    for rank, i in enumerate(result.order(), start=1):
        s = scores[i]
        hardest = hardest_structure(s.asd_per_class, label_names, label_values)

        def _num(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value), 6)

        rows.append(
            {
                "case": case_ids[i],
                "rank": rank,
                "selected": i in picked,
                "score": _num(result.score[i]),
                "priority": _num(result.objective[i]),
                "dkd": _num(gap[i]),
                "asd": round(float(s.asd), 6) if has_head else None,
                "asd_per_class": {
                    label_names.get(label_values[c - 1], str(c)): round(v, 6)
                    for c, v in sorted(s.asd_per_class.items())
                }
                if has_head
                else {},
                "hardest_structure": hardest[0] if (hardest and has_head) else None,
                "diversity": _num(div[i]),
                "mean_entropy": round(float(s.mean_entropy), 6),
                "epistemic": _num(s.epistemic),
                "kg_bn": _num(s.kg_bn),
                "empty_roi": bool(s.empty_roi) if has_head else None,
                "reason": explain(
                    config.strategy,
                    s,
                    q_gap=float(q_gap[i]),
                    q_asd=float(q_asd[i]),
                    diversity=float(div[i]),
                    pool_size=len(scores),
                    selected=i in picked,
                    label_names=label_names,
                    label_values=label_values,
                    has_head=has_head,
                ),
            }
        )
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": model_version,
        "strategy": config.strategy.value,
        "budget": config.budget,
        "config": config.to_dict(),
        "cold_start": not has_head,
        "notes": result.notes,
        "selected": [case_ids[i] for i in result.picks],
        "cases": rows,
        **extra,
    }
