"""The label-efficiency benchmark's results summarised, and the goals they are held to.

:func:`summarise` gives the mean and spread over seeds per strategy, mode, variant and budget,
the paired differences, the areas under the curves, the issue's goals (:func:`goals`) and how
the promotion gate did (:func:`gate_record`); :func:`payoff_goals` says whether fine-tuning pays
off against the pretrained model. Reported, not asserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from assft.apps.label_efficiency_grid import SINGLE
from assft.apps.label_efficiency_report import CEILING
from assft.apps.selection_stats import (
    area_under_curve,
    paired_differences,
    selection_goals,
    t_interval,
)

__all__ = ["gate_record", "goals", "payoff_goals", "summarise"]


def summarise(
    results: list[dict[str, Any]], budgets: Sequence[int] | None = None
) -> dict[str, Any]:
    """Mean and spread (sample std) over seeds per strategy, mode, variant and budget."""
    groups: dict[tuple, list[float]] = {}
    pools: dict[tuple, list[float]] = {}
    for r in results:
        key = (r["strategy"], r["mode"], r.get("variant", ""), r["budget"])
        groups.setdefault(key, []).append(r["test_dice"])
        if r.get("pool_dice") is not None:
            pools.setdefault(key, []).append(r["pool_dice"] - r["pool_dice_pretrained"])
    table = []
    for (strategy, mode, variant, budget), values in sorted(groups.items()):
        gains = pools.get((strategy, mode, variant, budget), [])
        table.append(
            {
                "strategy": strategy,
                "mode": mode,
                "variant": variant,
                "budget": budget,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "ci95": t_interval(values)[1],
                "n": len(values),
                "pool_gain": float(np.mean(gains)) if gains else None,
                "pool_gain_std": float(np.std(gains, ddof=1)) if len(gains) > 1 else None,
            }
        )
    paired = paired_differences(results)
    return {
        "table": table,
        "paired": paired,
        "auc": area_under_curve(table, budgets),
        "goals": goals(table) + selection_goals(results),
        "gate": gate_record(results),
    }


def gate_record(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How the promotion gate did: promoted runs, and any promoted version worse than its
    parent on the held-out cases (there must be none) or on the test scans."""
    # Every round of a run counts: a later round's version has an adapted parent.
    gated = [
        round_
        for r in results
        for round_ in (r.get("rounds") or [r])
        if round_.get("validation_dice") is not None
    ]
    promoted = [r for r in gated if r.get("promoted")]
    worse_held_out = [
        r for r in promoted if r["validation_dice"] < r["parent_validation_dice"] - 1e-9
    ]
    return {
        "runs_with_held_out": len(gated),
        "promoted": len(promoted),
        "promoted_worse_on_held_out": len(worse_held_out),
        "refused": len(gated) - len(promoted),
    }


def _mean(
    table: list[dict[str, Any]], strategy: str, mode: str, budget: int, variant: str = ""
) -> float | None:
    for row in table:
        if (row["strategy"], row["mode"], row["budget"], row["variant"]) == (
            strategy,
            mode,
            budget,
            variant,
        ):
            return row["mean"]
    return None


def goals(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the figures and whether it holds (reported, not asserted)."""
    budgets = sorted({row["budget"] for row in table})
    if not budgets:
        return []
    smallest = budgets[0]
    out = []
    ours = _mean(table, "attsq", "selective", smallest)
    baseline = _mean(table, "random", "none", smallest)
    if ours is not None and baseline is not None:
        out.append(
            {
                "goal": f"ATTSQ+selective beats random+supervised at budget {smallest}",
                "ours": ours,
                "other": baseline,
                "margin": ours - baseline,
                "holds": ours > baseline,
            }
        )
    for single in SINGLE:
        other = _mean(table, single, "selective", smallest)
        if ours is not None and other is not None:
            out.append(
                {
                    "goal": f"ATTSQ beats {single} at budget {smallest} (both selective SSFT)",
                    "ours": ours,
                    "other": other,
                    "margin": ours - other,
                    "holds": ours > other,
                }
            )
    for budget in budgets:
        selective = _mean(table, "attsq", "selective", budget)
        for mode in ("none", "all"):
            other = _mean(table, "attsq", mode, budget)
            if selective is not None and other is not None:
                out.append(
                    {
                        "goal": f"selective SSFT beats '{mode}' at budget {budget} (ATTSQ picks)",
                        "ours": selective,
                        "other": other,
                        "margin": selective - other,
                        "holds": selective > other,
                    }
                )
        double = _mean(table, "random", "selective", 2 * budget)
        if selective is not None and double is not None:
            out.append(
                {
                    "goal": f"ATTSQ at budget {budget} vs random at {2 * budget}",
                    "ours": selective,
                    "other": double,
                    "margin": selective - double,
                    "holds": selective >= double,
                }
            )
    return out


def payoff_goals(
    table: list[dict[str, Any]], pretrained: float, budgets: Sequence[int]
) -> list[dict[str, Any]]:
    """Does fine-tuning pay off (issue 10's figures)? The ceiling (every selectable scan
    labeled) at least pretrained + 0.15 and above the smallest budget; random picks at the
    smallest budget at least pretrained + 0.05. Reported, not asserted."""
    smallest = min(budgets)
    out = []
    ceiling = next((r for r in table if r["variant"] == CEILING), None)
    small = _mean(table, "random", "none", smallest)
    if small is None:
        small = _mean(table, "random", "selective", smallest)
    if ceiling is not None:
        out.append(
            {
                "goal": "ceiling >= pretrained + 0.15",
                "ours": ceiling["mean"],
                "other": pretrained + 0.15,
                "margin": ceiling["mean"] - pretrained - 0.15,
                "holds": ceiling["mean"] >= pretrained + 0.15,
            }
        )
        if small is not None:
            out.append(
                {
                    "goal": f"ceiling above random at budget {smallest} (more labels bring more)",
                    "ours": ceiling["mean"],
                    "other": small,
                    "margin": ceiling["mean"] - small,
                    "holds": ceiling["mean"] > small + ceiling["std"],
                }
            )
    if small is not None:
        out.append(
            {
                "goal": f"random at budget {smallest} >= pretrained + 0.05",
                "ours": small,
                "other": pretrained + 0.05,
                "margin": small - pretrained - 0.05,
                "holds": small >= pretrained + 0.05,
            }
        )
    return out
