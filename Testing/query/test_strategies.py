"""Every registered strategy on plain arrays: exact picks and order from hand-worked pools.

The pool: five cases whose pretrained embeddings are unit vectors at 0, 5, 60, 90 and 70
degrees, so cases 0 and 1 are near-duplicates (cosine distance 1 - cos 5 = 0.004) and case 3 is
the farthest from case 0 (distance 1). Every pair is at most 90 degrees apart, so every cosine
distance lies in [0, 1] (the diversity term's running minimum starts at 1). No case is labeled.
Rank normalisation q maps the five values of a score to 0, 1/4, ..., 1.

- knowledge gap (bn): 0.9, 0.8, 0.1, 0.2, 0.3 -> q = 1, 3/4, 0, 1/4, 1/2
- ASD:                0.4, 0.1, 0.2, 0.5, 0.3 -> q = 3/4, 0, 1/4, 1, 1/2

The default diversity (``typical``) centres the embeddings on the pool's mean first. Centred,
the pool is two groups: cases 0 and 1 (distance 0.003) against cases 2, 3 and 4 (distances
0.053 to 0.236 among them, 1.88 to 2.00 to cases 0 and 1); the 90th percentile of the ten
pairwise distances, the pool's spread, is 1.9883, and D~ = min(1, D / 1.9883).

A strategy added to the registry needs a row in EXPECTED (the coverage test says so).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from assft.errors import BadInputError
from assft.query.config import QueryConfig, Strategy
from assft.query.strategies import (
    STRATEGIES,
    PoolStatistics,
    register_strategy,
    run_strategy,
    strategy_info,
)

ANGLES = (0.0, 5.0, 60.0, 90.0, 70.0)
N = len(ANGLES)


def _pool(**changes) -> PoolStatistics:
    radians = np.deg2rad(ANGLES)
    stats = PoolStatistics(
        z0=np.stack([np.cos(radians), np.sin(radians)], axis=1),
        labeled_z0=np.zeros((0, 2)),
        asd=np.array([0.4, 0.1, 0.2, 0.5, 0.3]),
        asd0=np.array([0.4, 0.1, 0.2, 0.5, 0.3]),
        mean_entropy=np.array([0.3, 0.1, 0.2, 0.5, 0.4]),
        class_entropy=np.array([[0.9, np.nan], [0.2, 0.6], [0.5, 0.8], [0.1, 0.3], [0.4, np.nan]]),
        kg_bn=np.array([0.9, 0.8, 0.1, 0.2, 0.3]),
        epistemic=np.array([0.05, 0.4, 0.3, 0.2, 0.1]),
        view_entropy=np.array([0.1, 0.5, 0.2, 0.3, 0.4]),
        energy_variance=np.array([0.05, 0.01, 0.5, 0.02, 0.03]),
    )
    for name, value in changes.items():
        setattr(stats, name, value)
    return stats


def _random_picks(seed: int, budget: int) -> list[int]:
    """`random` is the top of one seeded uniform draw per case."""
    draw = np.random.default_rng(seed).random(N)
    return [int(i) for i in np.argsort(-draw, kind="stable")[:budget]]


# strategy -> (config changes, expected picks, expected full order). Worked by hand:
EXPECTED: dict[str, tuple[dict, list[int], list[int]]] = {
    # S = (q(KG) + q(ASD)) / 2 = 7/8, 3/8, 1/8, 5/8, 4/8. Pick 1: every D is 1 (nothing labeled),
    # so the top S, case 0. Pick 2: D to case 0 = 0.004, 0.5, 1, 0.658 for cases 1, 2, 3, 4,
    # q(D) = 0, 1/3, 1, 2/3, so S + q(D) = 0.375, 0.458, 1.625, 1.167: case 3. Pick 3: D to
    # {0, 3} = 0.004, 0.134, 0.060 for cases 1, 2, 4: 0.375 + 0, 0.125 + 1, 0.5 + 0.5: case 2.
    # The rest: D to {0, 3, 2} = 0.004, 0.015: 0.375 + 0, 0.5 + 1: case 4, then case 1.
    "attsq": ({"budget": 3, "diversity": "rank"}, [0, 3, 2], [0, 3, 2, 4, 1]),
    # S = q(KG). Pick 1: case 0. Pick 2: 0.75 + 0, 0 + 1/3, 0.25 + 1, 0.5 + 2/3: case 3, not the
    # near-duplicate case 1 with the second-highest gap. The rest (D to {0, 3} as above):
    # 1: 0.75 + 0, 2: 0 + 1, 4: 0.5 + 0.5, so cases 2 and 4 tie at 1.0 and go by index.
    "dkd": ({"budget": 2, "diversity": "rank"}, [0, 3], [0, 3, 2, 4, 1]),
    # Power sampling with a huge power is the top S: 7/8 (case 0), 5/8 (case 3), 4/8, 3/8, 1/8.
    "attsq-power": ({"budget": 2, "power_beta": 1e6}, [0, 3], [0, 3, 4, 1, 2]),
    # Prototypes: the 3 lowest ASD under f0, cases 1, 2, 4 (at 5, 60, 70 degrees); mean 1 - cos
    # to them: 0.387, 0.335, 0.147, 0.369, 0.198 -> q = 1, 1/2, 0, 3/4, 1/4. q(view entropy) =
    # 0, 1, 1/4, 1/2, 3/4; q(energy variance) = 3/4, 0, 1, 1/4, 1/2. S = the mean of the three:
    # 0.583, 0.5, 0.417, 0.5, 0.5. Without diversity: case 0, then the ties by index.
    "asfosda": ({"budget": 2, "lambda_div": 0.0}, [0, 1], [0, 1, 3, 4, 2]),
    # k = 2 parts of the centred embeddings: {2, 3, 4}, the larger, then {0, 1}. The case
    # nearest each centre: case 4 (at 70 degrees, between 60 and 90), then case 0 (0 and 1 are
    # equally near their centre: the lower index). The rest by closeness to their centre.
    "typicality": ({"budget": 2}, [4, 0], [4, 0, 1, 2, 3]),
    # The top q(ASD), no diversity term.
    "asd": ({"budget": 2}, [3, 0], [3, 0, 4, 2, 1]),
    # The top whole-volume mean entropy.
    "entropy": ({"budget": 2}, [3, 4], [3, 4, 0, 2, 1]),
    # The top MC-dropout entropy.
    "epistemic": ({"budget": 2}, [1, 2], [1, 2, 3, 4, 0]),
    # k-center greedy: the pool's mean direction is at 45.6 degrees; farthest from it is case 0
    # (1 - cos 45.6 = 0.300, case 3: 0.286). Then the farthest from {mean, case 0}: distances
    # 0.004, 0.032, 0.286, 0.090: case 3. The rest by their final distance: 4 (0.060),
    # 2 (0.032), 1 (0.004).
    "coreset": ({"budget": 2}, [0, 3], [0, 3, 4, 2, 1]),
    # With a huge power, sampling is the argmax per class in turn: class 1 -> case 0 (0.9),
    # class 2 -> case 2 (0.8; cases 0 and 4 lack class 2), class 1 -> case 4 (0.4 of 0.2,
    # 0.1, 0.4). The rest by mean class entropy: case 1 (0.4), case 3 (0.2).
    "clasp": ({"budget": 3, "clasp_beta": 1e6}, [0, 2, 4], [0, 2, 4, 1, 3]),
    # The top of the seeded draw.
    "random": ({"budget": 2, "seed": 7}, _random_picks(7, 2), None),
}


def test_every_registered_strategy_has_a_table_row():
    assert set(EXPECTED) == set(STRATEGIES), "add the new strategy's expected picks to EXPECTED"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_exact_picks_and_order(name):
    changes, picks, order = EXPECTED[name]
    result = run_strategy(_pool(), QueryConfig(strategy=name, **changes))
    assert result.picks == picks
    if order is not None:
        assert result.order() == order
    assert sorted(result.order()) == list(range(N))
    for array in (result.score, result.objective, result.diversity, result.knowledge_gap):
        assert array.shape == (N,)


def test_the_typical_diversity_by_hand():
    # S = 7/8, 3/8, 1/8, 5/8, 4/8. Pick 1: D~ = 1 for all (nothing labeled): case 0, 1.875.
    # Pick 2: D to case 0 = 0.003, 1.917, 1.958, 1.997 for cases 1-4, D~ = 0.0014, 0.964,
    # 0.985, 1: S + D~ = 0.376, 1.089, 1.610, 1.5: case 3. Pick 3: D to {0, 3} = 0.003, 0.236,
    # 0.069 for cases 1, 2, 4, D~ = 0.0014, 0.119, 0.035: 0.376, 0.244, 0.535: case 4. The
    # rest: D~ to {0, 3, 4} = 0.0014 (case 1), 0.027 (case 2): 0.376, 0.152.
    result = run_strategy(_pool(), QueryConfig(strategy="attsq", budget=3))
    assert result.picks == [0, 3, 4] and result.order() == [0, 3, 4, 1, 2]
    assert result.objective[[0, 3, 4, 1, 2]] == pytest.approx(
        [1.875, 1.610, 0.535, 0.376, 0.152], abs=2e-3
    )
    assert result.diversity[[0, 3, 4]] == pytest.approx([1.0, 0.985, 0.035], abs=2e-3)
    # DKD: S = q(KG). Pick 2: 3/4 + 0.0014, 0 + 0.964, 1/4 + 0.985, 1/2 + 1: case 4, not 3.
    dkd = run_strategy(_pool(), QueryConfig(strategy="dkd", budget=2))
    assert dkd.picks == [0, 4] and dkd.order() == [0, 4, 1, 3, 2]


def test_the_typical_scale_means_the_same_in_any_pool():
    # Scaling every distance by stretching the pool changes nothing: D~ is relative.
    near = _pool()
    far = _pool(z0=np.concatenate([near.z0, np.zeros((N, 1))], axis=1) * 7.0)
    a = run_strategy(near, QueryConfig(strategy="attsq", budget=3))
    b = run_strategy(far, QueryConfig(strategy="attsq", budget=3))
    assert a.picks == b.picks and a.objective == pytest.approx(b.objective)


def test_the_diversity_term_is_what_separates_near_duplicates():
    """Without it DKD takes the two highest gaps, cases 0 and 1, five degrees apart."""
    result = run_strategy(_pool(), QueryConfig(strategy="dkd", budget=2, lambda_div=0.0))
    assert result.picks == [0, 1]


def test_labeled_cases_push_picks_away():
    """A case labeled at 0 degrees: ATTSQ no longer starts with case 0, which duplicates it."""
    assert run_strategy(_pool(), QueryConfig(budget=1)).picks == [0]
    stats = _pool(labeled_z0=np.array([[1.0, 0.0]]))
    # As first defined (rank): D = 0, 0.004, 0.5, 1, 0.658 -> q(D) = 0, 1/4, 1/2, 1, 3/4;
    # S = 7/8, 3/8, 1/8, 5/8, 4/8; S + q(D) = 0.875, 0.625, 0.625, 1.625, 1.25.
    result = run_strategy(stats, QueryConfig(budget=1, diversity="rank"))
    assert result.picks == [3]
    assert result.diversity[3] == pytest.approx(1.0)
    # Centred, over the spread (the labeled case sits where case 0 does): D~ = 0, 0.0014,
    # 0.119, 0.985, 0.035; S + D~ = 0.875, 0.376, 0.244, 1.610, 0.535.
    typical = run_strategy(stats, QueryConfig(budget=1))
    assert typical.picks == [3]
    assert typical.diversity == pytest.approx([0.0, 0.0014, 0.1186, 0.9848, 0.0347], abs=1e-3)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_has_a_title_and_runs_deterministically(name):
    info = strategy_info(name)
    assert info.name == name and info.title.strip() and info.title == info.title.strip()
    assert strategy_info(Strategy(name)) is info
    config = QueryConfig(strategy=name, budget=2, seed=3)
    first, again = run_strategy(_pool(), config), run_strategy(_pool(), config)
    assert len(first.picks) == 2 == len(set(first.picks))
    assert first.picks == again.picks
    assert np.array_equal(first.score, again.score)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_cold_start_refuses_exactly_the_strategies_that_need_a_head(name):
    stats = _pool(asd=None, asd0=None)
    config = QueryConfig(strategy=name, budget=2)
    if strategy_info(name).needs_head:
        with pytest.raises(BadInputError, match="needs a segmentation head") as refused:
            run_strategy(stats, config)
        # The message offers every strategy that works without one, from the registry.
        offered = str(refused.value).split("rank with", 1)[1]
        for other in STRATEGIES.values():
            assert (f"'{other.name}'" in offered) == (not other.needs_head)
    else:
        result = run_strategy(stats, config)
        assert len(result.picks) == 2


def test_attsq_cold_start_ranks_by_the_gap_alone():
    result = run_strategy(_pool(asd=None, asd0=None), QueryConfig(strategy="attsq", budget=2))
    assert result.notes["cold_start"] is True
    assert result.picks == [0, 4]  # as DKD: S = q(KG)


@pytest.mark.parametrize("name", [n for n, s in STRATEGIES.items() if s.needs_mc_dropout])
def test_mc_dropout_strategies_need_their_statistics(name):
    with pytest.raises(ValueError, match="MC-dropout"):
        run_strategy(_pool(epistemic=None), QueryConfig(strategy=name, budget=2))


def test_the_random_draw_follows_the_seed():
    picks = {
        tuple(run_strategy(_pool(), QueryConfig(strategy="random", budget=2, seed=s)).picks)
        for s in range(6)
    }
    assert len(picks) > 1


def test_a_budget_larger_than_the_pool_is_refused():
    with pytest.raises(BadInputError, match="larger than the unlabeled pool"):
        run_strategy(_pool(), QueryConfig(budget=N + 1))


def test_the_names_everywhere_come_from_the_registry():
    from assft.apps import label_efficiency_grid
    from assft.cli import build_parser

    names = list(STRATEGIES)
    assert [member.value for member in Strategy] == names
    # The member names the Slicer parameter node stores: ATTSQ for "attsq".
    assert all(Strategy(name).name == name.upper().replace("-", "_") for name in names)
    assert list(label_efficiency_grid.STRATEGIES) == names
    assert set(label_efficiency_grid.SINGLE) == {n for n, s in STRATEGIES.items() if s.baseline}
    assert {"attsq", "random", "dkd", "asd"}.isdisjoint(label_efficiency_grid.SINGLE)
    rank = build_parser()._subparsers._group_actions[0].choices["rank"]
    strategy = next(a for a in rank._actions if a.dest == "strategy")
    assert list(strategy.choices) == names
    with pytest.raises(BadInputError, match="strategy must be one of " + ", ".join(names)):
        QueryConfig(strategy="nope")


def test_registration_is_closed_once_the_names_are_built():
    def query_late(stats, config, rng):
        raise AssertionError("never runs")

    with pytest.raises(RuntimeError, match="register strategies in"):
        register_strategy("late", "Late")(query_late)
    assert "late" not in STRATEGIES


def test_the_registry_imports_without_torch():
    code = "import sys, assft.query.strategies, assft.query.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hand_worked_distances():
    """The comments' numbers: the pool is what they say."""
    z0 = _pool().z0
    distance = 1.0 - z0 @ z0.T
    assert distance[0, 1] == pytest.approx(1 - math.cos(math.radians(5)))
    assert distance[0, 3] == pytest.approx(1.0)
    assert distance.min() >= -1e-12 and distance.max() <= 1.0 + 1e-12


def test_the_evidence_gap_reads_the_labeled_scans_nearest_by_acquisition():
    # Acquisitions: cases 0-2 like evidence scan A (the model fails there: Dice 0.2), cases 3-4
    # like evidence scan B (Dice 0.9).
    a0 = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.02], [1.0, 1.0], [0.98, 1.0]])
    evidence = dict(
        evidence_a0=np.array([[0.0, 0.01], [1.0, 0.99]]), evidence_failure=np.array([0.8, 0.1])
    )
    stats = _pool(a0=a0, labeled_a0=None, **evidence)
    from assft.query.strategies import knowledge_gap

    gap, notes = knowledge_gap(stats, QueryConfig(budget=1))
    assert notes["gap_estimator"] == "evidence" and gap.tolist() == [0.8, 0.8, 0.8, 0.1, 0.1]
    # DKD ranks the failing acquisition first; the diversity term (on a0) then crosses over.
    dkd = run_strategy(stats, QueryConfig(strategy="dkd", budget=2))
    assert dkd.picks[0] in (0, 1, 2) and dkd.picks[1] in (3, 4)
    # When the evidence scans agree (one acquisition), `auto` keeps the BatchNorm gap.
    agreeing = _pool(
        a0=a0, evidence_a0=evidence["evidence_a0"], evidence_failure=np.array([0.8, 0.75])
    )
    assert knowledge_gap(agreeing, QueryConfig(budget=1))[1]["gap_estimator"] == "bn"
    with pytest.raises(BadInputError, match="dkd.gap is 'evidence'"):
        knowledge_gap(_pool(), QueryConfig.from_dict({"budget": 1, "dkd": {"gap": "evidence"}}))
