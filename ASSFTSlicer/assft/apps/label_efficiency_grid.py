"""The label-efficiency benchmark's grid and its bookkeeping.

What runs: every strategy x fine-tuning mode x budget x seed, the ablations, random at twice
each budget, the ceiling and a candidate recipe (:func:`planned_runs`); the key a run is
recorded under in ``runs.jsonl`` (:func:`run_key`: a run done is not run again); budgets
checked against the pool (:func:`check_budgets`); and a folder continued only under the setup it
was made with (:func:`check_same_setup`). :mod:`assft.apps.label_efficiency` runs the grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

from assft.apps.label_efficiency_report import CEILING
from assft.errors import BadInputError
from assft.query.strategies import STRATEGIES as REGISTERED

__all__ = [
    "ABLATIONS",
    "MODES",
    "RECIPE_ABLATIONS",
    "SINGLE",
    "STRATEGIES",
    "candidate_name",
    "check_budgets",
    "check_same_setup",
    "planned_runs",
    "pool_size_of",
    "run_key",
]

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


def run_key(run: dict[str, Any]) -> tuple:
    """What a run is recorded under: strategy, mode, budget, seed and variant."""
    return (run["strategy"], run["mode"], run["budget"], run["seed"], run.get("variant", ""))


def check_same_setup(path: Path, setup: dict[str, Any]) -> None:
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


def check_budgets(
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
