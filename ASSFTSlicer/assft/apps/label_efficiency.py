"""``assft bench label-efficiency``: every strategy x fine-tuning mode x budget x seed.

Each run selects from the same scored pool, labels the picks from the ground truth, fine-tunes
a copy of the base workspace and measures Dice on test scans that no run trains on. Results are
appended to ``runs.jsonl`` as they finish, so an interrupted benchmark continues where it stopped.

The scans are the sample target pool (``assft sample-data``) or, with ``--images`` and
``--labels``, a lab's own labeled scans (:meth:`Dataset.from_folders`), e.g. to decide how many
scans to label.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from assft.apps.label_efficiency_report import CEILING, describe_test_scans, dice_vs_budget_svg
from assft.apps.sampledata import LABEL_NAMES, write_sample_data
from assft.apps.selection_stats import (
    area_under_curve,
    dice_by_stratum,
    paired_differences,
    selection_goals,
    t_interval,
)
from assft.apps.simulation import (
    SMALL_MODEL_FINETUNE,
    Dataset,
    Simulation,
    append_result,
    fine_tunes_on_small_patches,
    read_results,
)
from assft.apps.sites import MIXED
from assft.errors import BadInputError
from assft.query.config import QueryConfig, Strategy
from assft.query.strategies import STRATEGIES as REGISTERED
from assft.runtime.progress import Progress
from assft.training.config import FinetuneConfig

MODES: tuple[str, ...] = ("selective", "none", "all")
"""The fine-tuning modes of the grid (training/config.py FinetuneMode)."""
RECIPE_ABLATIONS: dict[str, dict[str, Any]] = {
    "bn=frozen": {"freeze_batchnorm": True},
    "flips=all": {"flips": "all"},
    "intensity=on": {"intensity_augment": True},
    "schedule=cosine": {"schedule": "cosine"},
    "no best checkpoint": {"keep_best": False},
    "lr=1e-3": {"lr": 1e-3},
}
"""One recipe choice changed each (random picks, supervised, the smallest budget)."""
ABLATIONS: dict[str, dict[str, Any]] = {
    "gap=bn": {"query": {"dkd": {"gap": "bn"}}},
    "gap=prototype": {"query": {"dkd": {"gap": "prototype"}}},
    "no-diversity": {"query": {"lambda_div": 0.0}},
    "diversity=rank": {"query": {"diversity": "rank", "diversity_on": "embedding"}},
    "diversity=embedding": {"query": {"diversity_on": "embedding"}},
    "anchor=off": {"finetune": {"anchor": False}},
}
"""ATTSQ + selective SSFT with one part changed (every budget and seed): the knowledge-gap
estimator (BatchNorm statistics, prototypes), the diversity term off, the diversity term as
first defined (deep embeddings, rank normalised), the diversity term on the deep embeddings
(over the pool's spread), and fine-tuning without the anchor."""


STRATEGIES: tuple[str, ...] = tuple(REGISTERED)
"""Every registered strategy (query/strategies.py)."""
SINGLE: tuple[str, ...] = tuple(name for name, info in REGISTERED.items() if info.baseline)
"""The published single-criterion baselines that ATTSQ is compared with."""


def planned_runs(
    budgets: Sequence[int],
    seeds: Sequence[int],
    *,
    ablations: Sequence[str] = tuple(ABLATIONS),
    pool_size: int | None = None,
    ceiling: bool = True,
    modes: Sequence[str] = MODES,
    recipe_ablations: bool = False,
    candidate: dict[str, Any] | None = None,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """The grid: every strategy x fine-tuning mode (none, all, selective) x budget x seed;
    the ``ablations`` named (:data:`ABLATIONS`); random at twice each
    budget (ATTSQ at B is compared with random at 2B; left out where 2B exceeds ``pool_size``);
    and, given ``pool_size`` and unless ``ceiling`` is False, the recipe's ceiling: supervised
    fine-tuning with every pool case labeled. ``modes`` limits the fine-tuning modes;
    ``recipe_ablations`` adds each of :data:`RECIPE_ABLATIONS` at the smallest budget (random
    picks, supervised).
    ``candidate`` (fine-tuning settings) repeats every run of the grid itself (each strategy and
    mode, random at 2B, the ceiling; not the ablations) with those settings changed: a whole
    recipe against the default one, side by side. ``rounds`` > 1 runs every run but the
    ceiling as that many rounds (``"rounds": N`` in the run; a folder holds one number of
    rounds, its setup says which): label, fine-tune, rank again. Random at 2B is left out where
    ``rounds`` times 2B exceeds ``pool_size``."""
    runs = []
    for budget, seed in product(budgets, seeds):
        for strategy, mode in product(STRATEGIES, modes):
            runs.append({"strategy": strategy, "mode": mode, "budget": budget, "seed": seed})
        for variant in ablations:
            runs.append(
                {
                    "strategy": "attsq",
                    "mode": "selective",
                    "budget": budget,
                    "seed": seed,
                    "variant": variant,
                    **ABLATIONS[variant],
                }
            )
    double_mode = "selective" if "selective" in modes else modes[0]
    for budget, seed in product(sorted({2 * b for b in budgets} - set(budgets)), seeds):
        if pool_size is None or budget * rounds <= pool_size:  # 2B pool scans a round
            runs.append({"strategy": "random", "mode": double_mode, "budget": budget, "seed": seed})
    if recipe_ablations:
        for (variant, change), seed in product(RECIPE_ABLATIONS.items(), seeds):
            runs.append(
                {
                    "strategy": "random",
                    "mode": "none",
                    "budget": min(budgets),
                    "seed": seed,
                    "variant": variant,
                    "finetune": change,
                }
            )
    if pool_size and ceiling:
        runs += [
            {
                "strategy": "random",
                "mode": "none",
                "budget": pool_size,
                "seed": seed,
                "variant": CEILING,
            }
            for seed in seeds
        ]
    if candidate:
        name = candidate_name(candidate)
        runs += [
            {
                **run,
                "variant": f"{name}; {run['variant']}" if run.get("variant") else name,
                "finetune": dict(candidate),
            }
            for run in list(runs)
            if run.get("variant", "") in ("", CEILING)
        ]
    if rounds > 1:
        runs = [
            run if str(run.get("variant", "")).endswith(CEILING) else {**run, "rounds": rounds}
            for run in runs
        ]
    return runs


def candidate_name(candidate: dict[str, Any]) -> str:
    """The variant name of a candidate recipe: ``recipe: key=value, ...`` (keys sorted)."""
    return "recipe: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(candidate.items()))


def _key(run: dict[str, Any]) -> tuple:
    return (run["strategy"], run["mode"], run["budget"], run["seed"], run.get("variant", ""))


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


def _check_same_setup(path: Path, setup: dict[str, Any]) -> None:
    """Runs continue only under the setup they were made with (budgets and seeds may grow)."""
    setup = json.loads(json.dumps(setup))
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = sorted(k for k in set(setup) | set(recorded) if setup.get(k) != recorded.get(k))
        if changed:
            raise BadInputError(
                f"holds runs made with another setup ({', '.join(changed)} differ): "
                "choose another --out to start afresh",
                path.parent,
            )
    else:
        path.write_text(json.dumps(setup, indent=2) + "\n")


def pool_size_of(n: int, test_every: int) -> int:
    """Pool scans among ``n`` cases when every ``test_every``-th one is a test scan."""
    return n - n // test_every


def _check_budgets(
    budgets: Sequence[int],
    n: int,
    test_every: int,
    where: Path | None,
    what: str,
    rounds: int = 1,
) -> None:
    """Refuse a budget larger than the pool (over all ``rounds``: a run labels its budget
    every round), saying how many cases it needs."""
    budget = max(budgets)
    largest = budget * rounds
    pool = pool_size_of(n, test_every)
    if largest > pool:
        needed = largest
        while pool_size_of(needed, test_every) < largest:
            needed += 1
        over = f" over {rounds} rounds" if rounds > 1 else ""
        raise BadInputError(
            f"budget {budget}{over} needs a pool of at least {largest} cases, that is at least "
            f"{needed} {what} (1 in every {test_every} is a test scan); there are {n} "
            f"({pool} for the pool, {n - pool} to test)",
            where,
        )


def run_label_efficiency(
    out: Path,
    *,
    n: int = 40,
    budgets: tuple[int, ...] = (2, 4, 8),
    seeds: tuple[int, ...] = (0, 1, 2),
    iterations: int | None = None,
    views: int = 2,
    device: str = "auto",
    ablations: Sequence[str] = tuple(ABLATIONS),
    strategies: tuple[str, ...] = STRATEGIES,
    model: str = "demo",
    data_seed: int = 11,
    images: Path | None = None,
    labels: Path | None = None,
    label_names: dict[int, str] | None = None,
    test_every: int = 4,
    site: str = MIXED,
    modes: Sequence[str] = MODES,
    recipe_ablations: bool = False,
    candidate: dict[str, Any] | None = None,
    rounds: int = 1,
    ceiling: bool = True,
    max_minutes: float | None = None,
    marginal_gains: bool = False,
    transductive: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or continue) the benchmark in ``out``; returns the document (also written as JSON).

    ``max_minutes``: start no run after that many minutes (the runs done are kept; the same
    command continues), so that a long grid runs in chunks. ``marginal_gains``: after the
    grid, label each selectable pool scan alone (budget 1, seed 0, selective SSFT) and record its
    test Dice gain over the pretrained model (``marginal.jsonl``), which each signal is then
    checked against. ``transductive`` False skips each run's Dice on the pool's unlabeled scans.

    ``strategies`` limits the grid to some strategies (every run of the others is left out).

    The scans are ``n`` sample target scans (``assft sample-data``, seed ``data_seed``, written
    to ``out/data``), or, given ``images`` and ``labels``, a lab's own labeled scans
    (:meth:`Dataset.from_folders`; ``n`` and ``data_seed`` are then unused). ``label_names``
    (``{value: name}``) default to the model preset's; every label is checked against them
    before anything is written. Every ``test_every``-th case is a test scan. ``site`` names
    the sample-data site (``assft sample-data --sites``). ``iterations`` None: the steps follow
    the labeled set (the recipe's rule, :meth:`FinetuneConfig.steps_for`). ``candidate``
    (fine-tuning settings, checked here) is a whole recipe measured beside the default one;
    ``rounds`` > 1 runs the grid as that many rounds each (:func:`planned_runs`); ``ceiling``
    False leaves the ceiling out (measured elsewhere on the same scans).
    """
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise BadInputError(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise BadInputError(f"unknown ablations {unknown}; known: {', '.join(ABLATIONS)}")
    if (images is None) != (labels is None):
        raise BadInputError("a lab's own scans need both a folder of images and one of labels")
    if label_names is not None and images is None:
        raise BadInputError("label names apply to a lab's own scans (a folder of images) only")
    progress = progress or Progress("none")
    finetune: dict[str, Any] = {
        **({"iterations": iterations, "semi_iterations": iterations} if iterations else {}),
        **(SMALL_MODEL_FINETUNE if fine_tunes_on_small_patches(model) else {}),
    }
    if candidate:
        FinetuneConfig.from_dict({**finetune, **candidate})  # a bad key or value: one line
    data = out / "data"
    setup: dict[str, Any]
    names: dict[int, str] | None
    if images is not None and labels is not None:
        images, labels = Path(images).expanduser().resolve(), Path(labels).expanduser().resolve()
        names = _label_names(model, label_names)
        dataset = Dataset.from_folders(images, labels, test_every=test_every, label_names=names)
        n_cases = len(dataset.pool) + len(dataset.test)
        _check_budgets(budgets, n_cases, test_every, images, "labeled cases", rounds)
        setup = {
            "images": str(images),
            "labels": str(labels),
            "label_names": {str(k): v for k, v in sorted(names.items())},
            "test_every": test_every,
            # Runs continue only on the same scans: a case added or removed is another setup.
            "cases": sorted(c.case_id for c in dataset.pool + dataset.test),
            "model": model,
            "views": views,
            "finetune": finetune,
        }
    else:
        names = _sample_label_names(model)
        _check_budgets(budgets, n, test_every, None, "sample scans (--n)", rounds)
        # test_every is recorded only when it is not the default, so that a benchmark folder
        # made before it could be chosen continues.
        setup = {
            "n": n,
            **({"site": site} if site != MIXED else {}),
            "data_seed": data_seed,
            "model": model,
            "views": views,
            "finetune": finetune,
        }
        if test_every != 4:
            setup["test_every"] = test_every
    if rounds > 1:  # a folder holds runs of one number of rounds
        setup["rounds"] = rounds
    out.mkdir(parents=True, exist_ok=True)
    _check_same_setup(out / "setup.json", setup)
    if images is None:
        if not (data / "manifest.json").is_file():
            write_sample_data(data, n, n_source=0, sites=[site], seed=data_seed, progress=progress)
        dataset = Dataset.from_sample_data(data, site=site, test_every=test_every)
    simulation = Simulation(
        out,
        dataset,
        model=model,
        label_names=names,
        device=device,
        views=views,
        # The MC-dropout passes only where a strategy of the grid needs them.
        epistemic=any(REGISTERED[name].needs_mc_dropout for name in strategies),
        transductive=transductive,
        progress=progress,
    )
    results_path = out / "runs.jsonl"
    done = {_key(r) for r in read_results(results_path)}
    plan = [
        r
        for r in planned_runs(
            budgets,
            seeds,
            ablations=ablations,
            pool_size=len(simulation.unlabeled_pool),
            ceiling=ceiling,
            modes=modes,
            recipe_ablations=recipe_ablations,
            candidate=candidate,
            rounds=rounds,
        )
        if _key(r) not in done and r["strategy"] in strategies
    ]
    progress.phase("label-efficiency", len(plan))
    started = time.monotonic()
    left = 0
    for i, run in enumerate(plan, start=1):
        if max_minutes is not None and time.monotonic() - started > 60.0 * max_minutes:
            left = len(plan) - i + 1
            break
        query = QueryConfig.from_dict(
            {
                "strategy": run["strategy"],
                "budget": run["budget"],
                "seed": run["seed"],
                "views": views,
                **run.get("query", {}),
            }
        )
        result = simulation.run(
            query,
            {**finetune, **run.get("finetune", {}), "mode": run["mode"]},
            variant=run.get("variant", ""),
            rounds=run.get("rounds", 1),
        )
        append_result(results_path, result)
        progress.update(
            i,
            run=f"{run['strategy']}/{run['mode']}/b{run['budget']}/s{run['seed']}"
            f"{run.get('variant', '')}",
            dice=round(result.test_dice, 4),
        )
    pretrained = simulation.pretrained_test_dice()
    gains: dict[str, float] = {}
    if marginal_gains:
        gains, remaining = _marginal_gains(
            simulation,
            {**finetune, "mode": "selective"},
            out / "marginal.jsonl",
            pretrained["mean_dice"],
            None if max_minutes is None else 60.0 * max_minutes - (time.monotonic() - started),
            views,
        )
        left += remaining
    results = read_results(results_path)
    test_cases = describe_test_scans(data if images is None else None, pretrained["by_case"])
    strata = {c["case_id"]: c["stratum"] for c in test_cases if c.get("stratum")}
    document = {
        "benchmark": "label-efficiency",
        "complete": left == 0,
        "runs_left": left,
        "setup": {
            "pool": len(dataset.pool),
            "test": len(dataset.test),
            "budgets": list(budgets),
            "strategies": list(strategies),
            "finetune": finetune,
            **({"candidate": candidate} if candidate else {}),
            **({"rounds": rounds} if rounds > 1 else {}),
            "seeds": list(seeds),
            "iterations": iterations,
            "views": views,
            "model": model,
            **(
                {"data_seed": data_seed}
                if images is None
                else {
                    "images": str(images),
                    "labels": str(labels),
                    "label_names": setup["label_names"],
                }
            ),
            "test_every": test_every,
            **({"site": site} if images is None else {}),
            "held_out": simulation.held_out,
            "selectable": len(simulation.unlabeled_pool),
            "device": simulation.scored.device,
        },
        "pretrained": {
            "mean_dice": pretrained["mean_dice"],
            "per_structure": pretrained["per_structure"],
        },
        "test_cases": test_cases,
        "parts": simulation.parts.to_dict(),
        **(
            {"strata": dice_by_stratum(results, strata, pretrained["by_case"])}
            if len(set(strata.values())) > 1
            else {}
        ),
        "signals_against_failure": simulation.signals_against_failure(),
        **(
            {
                "marginal_gains": gains,
                "signals_against_gains": simulation.signals_against_gains(gains),
            }
            if gains
            else {}
        ),
        "runs": results,
        **summarise(results, budgets),
    }
    document["payoff"] = payoff_goals(document["table"], pretrained["mean_dice"], budgets)
    (out / "label-efficiency.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "dice-vs-budget.svg").write_text(dice_vs_budget_svg(document))
    return document


def _marginal_gains(
    simulation: Simulation,
    finetune: dict[str, Any],
    path: Path,
    pretrained: float,
    seconds_left: float | None,
    views: int,
) -> tuple[dict[str, float], int]:
    """Each selectable pool scan labeled alone (budget 1, seed 0): its test Dice gain over the
    pretrained model, from ``path`` where measured before. Returns the gains and how many scans
    are left (``seconds_left`` ran out)."""
    done = {r["case"]: r for r in read_results(path)}
    started = time.monotonic()
    todo = [c.case_id for c in simulation.unlabeled_pool if c.case_id not in done]
    for i, case in enumerate(todo):
        if seconds_left is not None and time.monotonic() - started > seconds_left:
            return {c: r["gain"] for c, r in done.items()}, len(todo) - i
        query = QueryConfig(strategy=Strategy("random"), budget=1, seed=0, views=views)
        result = simulation.run(query, finetune, variant=f" alone {case}", picks=[case])
        done[case] = {
            "case": case,
            "test_dice": result.test_dice,
            "gain": result.test_dice - pretrained,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(done[case]) + "\n")
    return {c: r["gain"] for c, r in done.items()}, 0


def _label_names(model: str, label_names: dict[int, str] | None) -> dict[int, str]:
    """The labels of a run: those given, else the preset's (as ``create_workspace`` has them),
    checked as a workspace checks them."""
    from assft.models.presets import get_preset
    from assft.workspace.config import make_labels

    names = dict(label_names or get_preset(model).label_names or {1: "foreground"})
    make_labels(names)
    return names


def _sample_label_names(model: str) -> dict[int, str] | None:
    """The sample data's labels for a model with none of its own (an encoder without a head,
    whose first fine-tune trains one for them); None: the preset's, as before."""
    from assft.models.presets import get_preset

    return None if get_preset(model).label_names else dict(LABEL_NAMES)
