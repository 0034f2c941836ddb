"""``assft bench label-efficiency``: every strategy x fine-tuning mode x budget x seed.

Each run selects from the same scored pool, labels the picks from the ground truth, fine-tunes
a copy of the base workspace and measures Dice on test scans that no run trains on. Results are
appended to ``runs.jsonl`` as they finish, so an interrupted benchmark continues where it stopped.

The scans are the sample target pool (``assft sample-data``) or, with ``--images`` and
``--labels``, a lab's own labeled scans (:meth:`Dataset.from_folders`), e.g. to decide how many
scans to label.

The grid, the key a run is recorded under and the setup a folder continues under are
:mod:`assft.apps.label_efficiency_grid`; the summary and the goals it is held to,
:mod:`assft.apps.label_efficiency_goals`; the Markdown and the chart,
:mod:`assft.apps.label_efficiency_report`. A run itself is :class:`Simulation`'s
(:mod:`assft.apps.simulation`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assft.apps.label_efficiency_goals import payoff_goals, summarise
from assft.apps.label_efficiency_grid import (
    ABLATIONS,
    MODES,
    STRATEGIES,
    check_budgets,
    check_same_setup,
    planned_runs,
    run_key,
)
from assft.apps.label_efficiency_report import describe_test_scans, dice_vs_budget_svg
from assft.apps.sampledata import LABEL_NAMES, write_sample_data
from assft.apps.selection_stats import dice_by_stratum
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
        check_budgets(budgets, n_cases, test_every, images, "labeled cases", rounds)
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
        check_budgets(budgets, n, test_every, None, "sample scans (--n)", rounds)
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
    check_same_setup(out / "setup.json", setup)
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
    done = {run_key(r) for r in read_results(results_path)}
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
        if run_key(r) not in done and r["strategy"] in strategies
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
