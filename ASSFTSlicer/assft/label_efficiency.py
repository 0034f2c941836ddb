"""``assft bench label-efficiency``: every strategy x fine-tuning mode x budget x seed.

Each run selects from the same scored pool, labels the picks from the ground truth, fine-tunes
a copy of the base workspace and measures Dice on test scans that no run trains on. Results are
appended to ``runs.jsonl`` as they finish, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from assft.progress import Progress

MARK_BEGIN = "<!-- bench:label-efficiency:begin -->"
MARK_END = "<!-- bench:label-efficiency:end -->"
STRATEGIES = ("attsq", "random", "entropy", "epistemic", "coreset", "clasp", "dkd", "asd")
SINGLE = ("entropy", "epistemic", "coreset", "clasp")


def planned_runs(budgets, seeds, *, ablations: bool = True) -> list[dict[str, Any]]:
    """The grid: all strategies with selective SSFT; modes none/all for attsq and random;
    ablations of DKD's gap estimator and of the diversity term."""
    runs = []
    for budget, seed in product(budgets, seeds):
        for strategy in STRATEGIES:
            runs.append({"strategy": strategy, "mode": "selective", "budget": budget, "seed": seed})
        for strategy, mode in product(("attsq", "random"), ("none", "all")):
            runs.append({"strategy": strategy, "mode": mode, "budget": budget, "seed": seed})
        if ablations:
            runs.append({"strategy": "attsq", "mode": "selective", "budget": budget, "seed": seed,
                         "variant": "gap=prototype", "query": {"dkd": {"gap": "prototype"}}})
            runs.append({"strategy": "attsq", "mode": "selective", "budget": budget, "seed": seed,
                         "variant": "no-diversity", "query": {"lambda_div": 0.0}})
    return runs


def _key(run: dict[str, Any]) -> tuple:
    return (run["strategy"], run["mode"], run["budget"], run["seed"], run.get("variant", ""))


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (sample std) over seeds per strategy, mode, variant and budget."""
    groups: dict[tuple, list[float]] = {}
    for r in results:
        key = (r["strategy"], r["mode"], r.get("variant", ""), r["budget"])
        groups.setdefault(key, []).append(r["test_dice"])
    table = []
    for (strategy, mode, variant, budget), values in sorted(groups.items()):
        table.append({
            "strategy": strategy, "mode": mode, "variant": variant, "budget": budget,
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values),
        })
    return {"table": table, "goals": goals(table)}


def _mean(table, strategy, mode, budget, variant="") -> float | None:
    for row in table:
        if (row["strategy"], row["mode"], row["budget"], row["variant"]) == (strategy, mode, budget, variant):
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
        out.append({"goal": f"ATTSQ+selective beats random+supervised at budget {smallest}",
                    "ours": ours, "other": baseline, "margin": ours - baseline, "holds": ours > baseline})
    for single in SINGLE:
        other = _mean(table, single, "selective", smallest)
        if ours is not None and other is not None:
            out.append({"goal": f"ATTSQ beats {single} at budget {smallest} (both selective SSFT)",
                        "ours": ours, "other": other, "margin": ours - other, "holds": ours > other})
    for budget in budgets:
        selective = _mean(table, "attsq", "selective", budget)
        for mode in ("none", "all"):
            other = _mean(table, "attsq", mode, budget)
            if selective is not None and other is not None:
                out.append({"goal": f"selective SSFT beats '{mode}' at budget {budget} (ATTSQ picks)",
                            "ours": selective, "other": other, "margin": selective - other,
                            "holds": selective > other})
        double = _mean(table, "random", "selective", 2 * budget)
        if selective is not None and double is not None:
            out.append({"goal": f"ATTSQ at budget {budget} vs random at {2 * budget}",
                        "ours": selective, "other": double, "margin": selective - double,
                        "holds": selective >= double})
    return out


def run_label_efficiency(
    out: Path,
    *,
    n: int = 40,
    budgets: tuple[int, ...] = (2, 4, 8),
    seeds: tuple[int, ...] = (0, 1, 2),
    iterations: int = 60,
    views: int = 2,
    device: str = "auto",
    ablations: bool = True,
    model: str = "demo",
    data_seed: int = 11,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or continue) the benchmark in ``out``; returns the document (also written as JSON)."""
    from assft.config import QueryConfig
    from assft.experiments import (
        SMALL_MODEL_FINETUNE,
        Dataset,
        Simulation,
        append_result,
        read_results,
    )
    from assft.sampledata import write_sample_data

    progress = progress or Progress("none")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        write_sample_data(data, n, n_source=0, seed=data_seed, progress=progress)
    dataset = Dataset.from_sample_data(data)
    simulation = Simulation(out, dataset, model=model, device=device, views=views, progress=progress)
    results_path = out / "runs.jsonl"
    done = {_key(r) for r in read_results(results_path)}
    plan = [r for r in planned_runs(budgets, seeds, ablations=ablations) if _key(r) not in done]
    finetune = {"iterations": iterations, "semi_iterations": iterations,
                **(SMALL_MODEL_FINETUNE if model == "demo" else {})}
    progress.phase("label-efficiency", len(plan))
    for i, run in enumerate(plan, start=1):
        query = QueryConfig.from_dict({"strategy": run["strategy"], "budget": run["budget"],
                                       "seed": run["seed"], "views": views, **run.get("query", {})})
        result = simulation.run(query, {**finetune, "mode": run["mode"]}, variant=run.get("variant", ""))
        append_result(results_path, result)
        progress.update(i, run=f"{run['strategy']}/{run['mode']}/b{run['budget']}/s{run['seed']}"
                        f"{run.get('variant', '')}", dice=round(result.test_dice, 4))
    results = read_results(results_path)
    pretrained = simulation.pretrained_test_dice()
    document = {
        "benchmark": "label-efficiency",
        "setup": {"pool": len(dataset.pool), "test": len(dataset.test), "budgets": list(budgets),
                  "finetune": finetune,
                  "seeds": list(seeds), "iterations": iterations, "views": views, "model": model,
                  "data_seed": data_seed, "device": simulation.scored.device},
        "pretrained": {"mean_dice": pretrained["mean_dice"], "per_structure": pretrained["per_structure"]},
        "runs": results,
        **summarise(results),
    }
    (out / "label-efficiency.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "dice-vs-budget.svg").write_text(dice_vs_budget_svg(document))
    return document


def dice_vs_budget_svg(document: dict[str, Any]) -> str:
    from assft.report import lines_svg

    series: dict[str, list[tuple[float, float, float]]] = {}
    for row in document["table"]:
        if row["mode"] == "selective" and not row["variant"]:
            series.setdefault(row["strategy"], []).append((row["budget"], row["mean"], row["std"]))
        if row["strategy"] == "random" and row["mode"] == "none":
            series.setdefault("random (supervised)", []).append((row["budget"], row["mean"], row["std"]))
    return lines_svg(series, title="Test Dice against budget (mean and spread over seeds)",
                     x_label="labeled cases", y_label="mean Dice")


def markdown(document: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section."""
    setup = document["setup"]
    budgets = setup["budgets"]
    lines = [
        MARK_BEGIN,
        "### Label efficiency",
        "",
        f"`{command}`: target pool of {setup['pool']} sample scans, {setup['test']} test scans never "
        f"trained on; budgets {budgets}, seeds {setup['seeds']}, {setup['iterations']} + "
        f"{setup['iterations']} fine-tuning steps, {setup['views']} test-time views, "
        f"{setup['model']} model on {setup['device']}. Mean test Dice ± sample std over seeds. "
        f"Pretrained model: **{document['pretrained']['mean_dice']:.4f}**.",
        "",
        "| strategy | mode | variant | " + " | ".join(f"B={b}" for b in budgets) + " |",
        "|---|---|---|" + "---:|" * len(budgets),
    ]
    rows: dict[tuple, dict[int, str]] = {}
    for row in document["table"]:
        key = (row["strategy"], row["mode"], row["variant"])
        rows.setdefault(key, {})[row["budget"]] = f"{row['mean']:.4f} ± {row['std']:.4f}"
    for (strategy, mode, variant), cells in rows.items():
        lines.append(f"| {strategy} | {mode} | {variant or '-'} | "
                     + " | ".join(cells.get(b, "-") for b in budgets) + " |")
    lines += ["", "Goals (measured, not asserted):", ""]
    for goal in document["goals"]:
        mark = "holds" if goal["holds"] else "**does not hold**"
        lines.append(f"- {goal['goal']}: {goal['ours']:.4f} vs {goal['other']:.4f} "
                     f"(margin {goal['margin']:+.4f}): {mark}")
    lines.append(MARK_END)
    return "\n".join(lines)
