"""What the label-efficiency runs say about selection: intervals over seeds, paired differences
to random, the area under the Dice-against-labels curve, and Dice per acquisition.

Runs are paired by seed: every strategy sees the same validation scans, test scans and
fine-tuning seed, and random's draws are the same for a seed, so ``strategy - random`` is taken
seed by seed and its interval is the paired one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (any statistics table).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_interval(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95 % t-interval (NaN for fewer than 2 values), and n."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    quantile = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return float(x.mean()), float(quantile * x.std(ddof=1) / math.sqrt(n)), n


def _key(run: dict[str, Any]) -> tuple[str, str, str, int]:
    return (run["strategy"], run["mode"], run.get("variant", ""), int(run["budget"]))


def paired_differences(
    results: Sequence[dict[str, Any]], baseline: str = "random"
) -> list[dict[str, Any]]:
    """Each strategy, mode, variant and budget minus ``baseline`` (same mode, no variant, same
    budget), seed by seed: the mean difference with its 95 % interval, and whether it is above
    the interval (``lower`` > 0)."""
    by_seed: dict[tuple, dict[int, float]] = {}
    for run in results:
        by_seed.setdefault(_key(run), {})[int(run["seed"])] = float(run["test_dice"])
    rows = []
    for key, seeds in sorted(by_seed.items()):
        strategy, mode, variant, budget = key
        reference = by_seed.get((baseline, mode, "", budget))
        if reference is None or (strategy == baseline and not variant):
            continue
        paired = [seeds[s] - reference[s] for s in sorted(seeds) if s in reference]
        mean, half, n = t_interval(paired)
        if n == 0:
            continue
        rows.append(
            {
                "strategy": strategy,
                "mode": mode,
                "variant": variant,
                "budget": budget,
                "difference": mean,
                "ci95": half,
                "n": n,
                "lower": mean - half if math.isfinite(half) else math.nan,
                "upper": mean + half if math.isfinite(half) else math.nan,
            }
        )
    return rows


def area_under_curve(
    table: Sequence[dict[str, Any]], budgets: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Per strategy, mode and variant with two or more of the ``budgets`` (default: every
    budget in the table): the area under the mean test Dice against the number of labels
    (trapezoids), over the span of its budgets (a mean Dice). Give the grid's own budgets, so
    that random's runs at twice a budget do not stretch its curve beyond the others'."""
    curves: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for row in table:
        if budgets is not None and int(row["budget"]) not in budgets:
            continue
        curves.setdefault((row["strategy"], row["mode"], row["variant"]), []).append(
            (int(row["budget"]), float(row["mean"]))
        )
    rows = []
    for (strategy, mode, variant), points in sorted(curves.items()):
        points.sort()
        if len(points) < 2:
            continue
        x = np.array([p[0] for p in points], dtype=np.float64)
        y = np.array([p[1] for p in points], dtype=np.float64)
        area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
        rows.append(
            {
                "strategy": strategy,
                "mode": mode,
                "variant": variant,
                "budgets": [int(b) for b in x],
                "auc": area / float(x[-1] - x[0]),
            }
        )
    return rows


def dice_by_stratum(
    results: Sequence[dict[str, Any]],
    strata: dict[str, str],
    pretrained: dict[str, float],
) -> dict[str, Any]:
    """Test Dice per acquisition (stratum) of the test scans.

    Returns ``pretrained`` (stratum -> Dice of the pretrained model), and ``rows``: per
    strategy, mode, variant and budget, the mean over seeds of each stratum's mean Dice with its
    95 % interval, its change from the pretrained model, and the worst stratum's Dice (each
    seed's lowest stratum, averaged over seeds).
    """
    names = sorted(set(strata.values()))

    def per_stratum(by_case: dict[str, float]) -> dict[str, float]:
        out = {}
        for name in names:
            values = [d for c, d in by_case.items() if strata.get(c) == name]
            if values:
                out[name] = float(np.mean(values))
        return out

    before = per_stratum(pretrained)
    groups: dict[tuple, list[dict[str, float]]] = {}
    for run in results:
        if run.get("test_per_case"):
            groups.setdefault(_key(run), []).append(per_stratum(run["test_per_case"]))
    rows = []
    for (strategy, mode, variant, budget), seeds in sorted(groups.items()):
        cells = {}
        for name in before:
            mean, half, n = t_interval(s[name] for s in seeds if name in s)
            cells[name] = {"mean": mean, "ci95": half, "n": n, "change": mean - before[name]}
        worst = t_interval(min(s.values()) for s in seeds if s)
        rows.append(
            {
                "strategy": strategy,
                "mode": mode,
                "variant": variant,
                "budget": budget,
                "strata": cells,
                "worst": worst[0],
                "worst_ci95": worst[1],
            }
        )
    return {"pretrained": before, "worst_pretrained": min(before.values()), "rows": rows}


def selection_goals(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 19's goals for ATTSQ + selective SSFT, each paired by seed: beating random by
    more than the paired 95 % interval at each budget, and beating each of its single signals
    (DKD alone, ASD alone). Reported, not asserted."""
    selective = [r for r in results if r["mode"] == "selective"]

    def mean_of(strategy: str, budget: int) -> float:
        return float(
            np.mean(
                [
                    r["test_dice"]
                    for r in selective
                    if _key(r) == (strategy, "selective", "", budget)
                ]
            )
        )

    out = []
    for baseline, title in (
        ("random", "random + selective SSFT"),
        ("dkd", "DKD alone"),
        ("asd", "ASD alone"),
    ):
        for row in paired_differences(selective, baseline=baseline):
            if row["strategy"] != "attsq" or row["variant"]:
                continue
            budget = row["budget"]
            out.append(
                {
                    "goal": f"ATTSQ + selective SSFT beats {title} by more than the paired 95 % "
                    f"interval at budget {budget}",
                    "ours": mean_of("attsq", budget),
                    "other": mean_of(baseline, budget),
                    "margin": row["difference"],
                    "interval": row["ci95"],
                    "pairs": row["n"],
                    "holds": bool(math.isfinite(row["lower"]) and row["lower"] > 0),
                }
            )
    return out


def _cell(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.4f} ± {half:.4f}" if math.isfinite(half) else f"{mean:+.4f}"


def _variant(row: dict[str, Any]) -> str:
    return f" ({row['variant']})" if row["variant"] else ""


def selection_markdown(document: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md lines: the paired differences to random, the area under the curve, and
    Dice per acquisition (when the scans come from several)."""
    lines: list[str] = []
    paired = [r for r in document.get("paired", []) if r["mode"] == "selective"]
    if paired:
        budgets = sorted({r["budget"] for r in paired})
        lines += [
            "",
            "Paired difference to random + selective SSFT (same seed, validation and test "
            "scans), mean ± 95 % interval over seeds:",
            "",
            "| strategy | variant | " + " | ".join(f"B={b}" for b in budgets) + " |",
            "|---|---|" + "---:|" * len(budgets),
        ]
        rows: dict[tuple[str, str], dict[int, str]] = {}
        for r in paired:
            rows.setdefault((r["strategy"], r["variant"]), {})[r["budget"]] = _cell(
                r["difference"], r["ci95"]
            )
        for (strategy, variant), cells in rows.items():
            lines.append(
                f"| {strategy} | {variant or '-'} | "
                + " | ".join(cells.get(b, "-") for b in budgets)
                + " |"
            )
    auc = [r for r in document.get("auc", []) if r["mode"] == "selective"]
    if auc:
        lines += [
            "",
            "Area under the test Dice against labels curve, over the span of budgets (a mean "
            "Dice): "
            + "; ".join(
                f"{r['strategy']}{_variant(r)} {r['auc']:.4f} "
                f"(budgets {r['budgets'][0]}-{r['budgets'][-1]})"
                for r in auc
            )
            + ".",
        ]
    strata = document.get("strata")
    if strata:
        names = list(strata["pretrained"])
        lines += [
            "",
            "Test Dice per acquisition (mean over seeds; in brackets the change from the "
            "pretrained model), and the worst acquisition's Dice:",
            "",
            "| strategy | mode | variant | B | " + " | ".join(names) + " | worst |",
            "|---|---|---|---:|" + "---:|" * (len(names) + 1),
            "| pretrained | - | - | 0 | "
            + " | ".join(f"{strata['pretrained'][n]:.3f}" for n in names)
            + f" | {strata['worst_pretrained']:.3f} |",
        ]
        for row in strata["rows"]:
            stratum_cells = [
                f"{row['strata'][n]['mean']:.3f} ({row['strata'][n]['change']:+.3f})"
                if n in row["strata"]
                else "-"
                for n in names
            ]
            lines.append(
                f"| {row['strategy']} | {row['mode']} | {row['variant'] or '-'} | "
                f"{row['budget']} | " + " | ".join(stratum_cells) + f" | {row['worst']:.3f} |"
            )
    return lines


def measured_margins(document: dict[str, Any], source: str) -> dict[str, Any]:
    """What ``assft demo`` prints beside its own run: per budget, ATTSQ + selective SSFT minus
    random + selective SSFT, paired over seeds, from a label-efficiency ``document`` (whose
    file is ``source``). Keyed by the budget as text, as ``measured_margins.json`` holds it."""
    out: dict[str, Any] = {}
    for row in document.get("paired", []):
        if (row["strategy"], row["mode"], row["variant"]) != ("attsq", "selective", ""):
            continue
        out[str(row["budget"])] = {
            "difference": round(float(row["difference"]), 4),
            "ci95": round(float(row["ci95"]), 4),
            "seeds": int(row["n"]),
            "source": source,
        }
    return out


MARGIN_SOURCES = {"hospital": "benchmarks/label-efficiency-hospital.json"}
"""The committed label-efficiency documents (paths from the repository's root) whose margins
``assft demo`` prints, per sample site."""


def write_measured_margins(repo: Path) -> Path:
    """Write the package's ``measured_margins.json`` from the documents of
    :data:`MARGIN_SOURCES` under the checkout ``repo``; returns its path."""
    from assft.apps.demo import MARGINS_FILE
    from assft.models.resources import resources_dir

    margins = {
        site: measured_margins(json.loads((repo / source).read_text(encoding="utf-8")), source)
        for site, source in MARGIN_SOURCES.items()
    }
    path = resources_dir() / MARGINS_FILE
    path.write_text(json.dumps(margins, indent=2) + "\n", encoding="utf-8")
    return path
