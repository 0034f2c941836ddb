"""Simulated annotation rounds and the label-efficiency summary."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from assft.apps.label_efficiency_goals import goals, summarise
from assft.apps.label_efficiency_grid import STRATEGIES, planned_runs, run_key
from assft.apps.label_efficiency_report import CEILING, markdown
from assft.apps.report import bars_svg, lines_svg, scatter_svg
from assft.apps.simulation import Case, Dataset, Simulation, append_result, read_results, spearman
from assft.query.config import QueryConfig
from assft_testing import run_cli, skip_without_template

FAST = {"iterations": 3, "semi_iterations": 3, "tau_c": 0.0, "checkpoint_every": 100}


def test_simulated_runs_select_label_finetune_and_test(tmp_path, synthetic_pool, tiny_preset_file):
    data, cases = synthetic_pool
    items = [Case(c.case_id, c.image, c.label) for c in cases]
    dataset = Dataset(pool=items[:6], test=items[6:])
    simulation = Simulation(tmp_path, dataset, model=str(tiny_preset_file), device="cpu", views=1)
    pretrained = simulation.pretrained_test_dice()
    assert set(pretrained["per_structure"]) == {"shell", "core"}
    assert list(pretrained["by_case"]) == [c.case_id for c in dataset.test]
    signals = simulation.signals_against_failure()
    assert set(signals) == {
        "knowledge gap (bn)",
        "knowledge gap (prototype)",
        "ASD",
        "ATTSQ score S",
        "mean entropy",
        "epistemic (MC dropout)",
    }
    assert all(-1.0 <= rho <= 1.0 for rho in signals.values())
    # One scan labeled alone: the run labels exactly that scan (the marginal-gain runs).
    alone = simulation.unlabeled_pool[-1].case_id
    single = simulation.run(
        QueryConfig(strategy="random", budget=1, views=1),
        {**FAST, "mode": "none"},
        variant=f" alone {alone}",
        picks=[alone],
    )
    assert single.selected == [alone]
    gains = {c.case_id: 0.1 * i for i, c in enumerate(simulation.unlabeled_pool)}
    against = simulation.signals_against_gains(gains)
    assert set(against) == set(signals) and all(-1.0 <= r <= 1.0 for r in against.values())
    assert simulation.signals_against_gains({alone: 0.2}) == {}  # too few to rank
    ranking = simulation.ranking(QueryConfig(strategy="attsq", budget=2, views=1))
    result = simulation.run(
        QueryConfig(strategy="attsq", budget=2, views=1), {**FAST, "mode": "selective"}
    )
    # The run labels exactly what the ranking selected, and only the pool is ever labeled.
    assert result.selected == ranking["selected"]
    assert set(result.selected) <= {c.case_id for c in dataset.pool}
    assert 0.0 <= result.test_dice <= 1.0 and result.version == "v1"
    # Dice of each test scan, whose mean over structures makes up the run's figure.
    assert list(result.test_per_case) == [c.case_id for c in dataset.test]
    assert all(0.0 <= v <= 1.0 for v in result.test_per_case.values())
    assert not (tmp_path / "runs" / "attsq-selective-b2-s0").exists()  # copies are removed
    other = simulation.run(
        QueryConfig(strategy="random", budget=2, seed=1, views=1), {**FAST, "mode": "none"}
    )
    assert other.mode == "none" and other.reliable == []
    append_result(tmp_path / "runs.jsonl", result)
    append_result(tmp_path / "runs.jsonl", other)
    assert [r["strategy"] for r in read_results(tmp_path / "runs.jsonl")] == ["attsq", "random"]
    # The base workspace itself never gets labels.
    assert simulation.base.status_summary()["counts"]["labeled"] == 0


def test_a_second_round_ranks_again_with_the_current_model_and_tests_it(
    tmp_path, synthetic_pool, tiny_preset_file
):
    from assft.apps.simulation import dice_on_test_scans
    from assft.workspace.workspace import Workspace

    _, cases = synthetic_pool
    items = [Case(c.case_id, c.image, c.label) for c in cases]
    dataset = Dataset(pool=items[:6], test=items[6:])
    simulation = Simulation(tmp_path, dataset, model=str(tiny_preset_file), device="cpu", views=1)
    query = QueryConfig(strategy="attsq", budget=1, views=1)
    result = simulation.run(query, {**FAST, "mode": "none"}, rounds=2, keep=True)
    first, second = result.rounds
    assert (first["version"], second["version"]) == ("v1", "v2")
    assert first["selected"] == simulation.ranking(query)["selected"]
    assert not set(first["selected"]) & set(second["selected"])  # ranked again without it
    assert not set(result.selected) & set(simulation.held_out)
    assert result.selected == first["selected"] + second["selected"]
    for round_ in result.rounds:  # each version against its parent on the validation set
        assert round_["validation_dice"] is not None
        assert round_["parent_validation_dice"] is not None
    # The figure is the current model's: the one the lab uses (a refused version is not).
    workspace = Workspace.open(tmp_path / "runs" / "attsq-none-b1-s0")
    current = workspace.current_model_version()
    expected = "v2" if second["promoted"] else ("v1" if first["promoted"] else "v0")
    assert current == expected
    tested = dice_on_test_scans(workspace, current, dataset.test, device="cpu", views=1)
    assert result.test_dice == pytest.approx(tested["mean_dice"])
    with pytest.raises(ValueError, match="rounds"):
        simulation.run(query, {**FAST, "mode": "none"}, rounds=0)


def test_the_gate_record_counts_every_round_and_the_refusals():
    from assft.apps.label_efficiency_goals import gate_record

    rounds = [
        {"validation_dice": 0.7, "parent_validation_dice": 0.6, "promoted": True},
        {"validation_dice": 0.65, "parent_validation_dice": 0.7, "promoted": False},
    ]
    single = {"validation_dice": 0.5, "parent_validation_dice": 0.4, "promoted": True}
    record = gate_record([{"rounds": rounds, **rounds[-1]}, single])
    assert record == {
        "runs_with_held_out": 3,
        "promoted": 2,
        "promoted_worse_on_held_out": 0,
        "refused": 1,
    }
    plan = planned_runs([2], [0], ablations=(), modes=("none",), pool_size=10, rounds=2)
    # The grid's own runs keep no variant (their goals and table rows are the grid's), and
    # random at 2B (4 a round, 8 in all) fits a pool of 10.
    assert {(r.get("variant", ""), r.get("rounds"), r["budget"]) for r in plan} == {
        ("", 2, 2),
        ("", 2, 4),
        (CEILING, None, 10),  # every pool scan labeled: one round
    }
    # Over 2 rounds, random at 2B needs 2 x 2B pool scans: left out of a pool of 6.
    small = planned_runs([2], [0], ablations=(), modes=("none",), pool_size=6, rounds=2)
    assert {r["budget"] for r in small if not r.get("variant")} == {2}


def test_spearman_ranks_with_ties():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.5, 0.2])) == pytest.approx(0.5)
    assert spearman(np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(-1.0)
    # Tied values share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2).
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        0.8660254
    )
    assert math.isnan(spearman(np.ones(3), np.array([1.0, 2.0, 3.0])))


def test_plan_and_summary():
    plan = planned_runs([2, 4], [0, 1])
    # Per seed and budget: every strategy x 3 modes and the six ablations; random at budget 8
    # (twice 4).
    assert len(plan) == 2 * 2 * (len(STRATEGIES) * 3 + 6) + 2
    ablated = {
        (r["variant"], json.dumps(r.get("query")), json.dumps(r.get("finetune")))
        for r in plan
        if r.get("variant")
    }
    assert ablated == {
        ("gap=bn", '{"dkd": {"gap": "bn"}}', "null"),
        ("gap=prototype", '{"dkd": {"gap": "prototype"}}', "null"),
        ("diversity=embedding", '{"diversity_on": "embedding"}', "null"),
        ("no-diversity", '{"lambda_div": 0.0}', "null"),
        ("diversity=rank", '{"diversity": "rank", "diversity_on": "embedding"}', "null"),
        ("anchor=off", "null", '{"anchor": false}'),
    }
    assert len(planned_runs([2], [0], ablations=("anchor=off",))) == len(STRATEGIES) * 3 + 1 + 1
    for budget in (2, 4):
        crossed = {
            (r["strategy"], r["mode"])
            for r in plan
            if r["budget"] == budget and not r.get("variant")
        }
        assert crossed == {(s, m) for s in STRATEGIES for m in ("none", "all", "selective")}
    assert sum(r["budget"] == 8 and r["strategy"] == "random" for r in plan) == 2
    ceiling = [r for r in planned_runs([2], [0, 1], pool_size=6) if r.get("variant") == CEILING]
    assert [(r["strategy"], r["mode"], r["budget"]) for r in ceiling] == [("random", "none", 6)] * 2
    # Without the ceiling, random at 2B is still left out where the pool is too small for it
    # (a --budgets 28 --no-ceiling run once ran its first run, then stopped on "budget 56").
    no_ceiling = planned_runs([28], [0], ablations=(), modes=("none",), pool_size=28, ceiling=False)
    assert [(r["strategy"], r["budget"]) for r in no_ceiling] == [(s, 28) for s in STRATEGIES]
    rows = [
        {
            "strategy": "attsq",
            "mode": "selective",
            "budget": 2,
            "seed": 0,
            "test_dice": 0.8,
            "test_per_case": {"t1": 0.9, "t2": 0.7},
        },
        {
            "strategy": "attsq",
            "mode": "selective",
            "budget": 2,
            "seed": 1,
            "test_dice": 0.6,
            "test_per_case": {"t1": 0.5, "t2": 0.7},
        },
        {
            "strategy": "random",
            "mode": "none",
            "budget": 6,
            "seed": 0,
            "test_dice": 0.9,
            "variant": CEILING,
        },
        {"strategy": "random", "mode": "none", "budget": 2, "seed": 0, "test_dice": 0.5},
        {"strategy": "random", "mode": "selective", "budget": 4, "seed": 0, "test_dice": 0.75},
        {"strategy": "entropy", "mode": "selective", "budget": 2, "seed": 0, "test_dice": 0.72},
    ]
    summary = summarise(rows)
    attsq = next(r for r in summary["table"] if r["strategy"] == "attsq")
    assert attsq["mean"] == pytest.approx(0.7) and attsq["std"] == pytest.approx(math.sqrt(0.02))
    by_goal = {g["goal"]: g for g in summary["goals"]}
    assert by_goal["ATTSQ+selective beats random+supervised at budget 2"][
        "margin"
    ] == pytest.approx(0.2)
    assert by_goal["ATTSQ beats entropy at budget 2 (both selective SSFT)"]["holds"] is False
    assert by_goal["ATTSQ at budget 2 vs random at 4"]["holds"] is False
    document = {
        "setup": {
            "pool": 6,
            "test": 2,
            "budgets": [2, 4],
            "seeds": [0, 1],
            "iterations": 3,
            "views": 1,
            "model": "tiny",
            "device": "cpu",
        },
        "pretrained": {"mean_dice": 0.4},
        "runs": rows,
        **summary,
        "signals_against_failure": {"ASD": 0.5, "mean entropy": -0.25},
        "test_cases": [
            {"case_id": "t1", "shifts": ["noise"], "anatomy": [], "pretrained": 0.6},
            {"case_id": "t2", "shifts": [], "anatomy": ["lesions"], "pretrained": 0.8},
        ],
    }
    text = markdown(document, "assft bench label-efficiency")
    assert "does not hold" in text and "0.7000 ± 0.1414" in text
    assert "ASD +0.50; mean entropy -0.25." in text
    assert "B=6" not in text and "Ceiling of the recipe" in text and "**0.9000 ± 0.0000**" in text
    assert (
        "| t1 | noise | - | 0.600 | 0.700 |" in text
        and "| t2 | near source | lesions | 0.800 | 0.700 |" in text
    )
    assert goals([]) == []


def test_a_benchmark_continues_only_under_its_own_setup(tmp_path):
    from assft.apps.label_efficiency import run_label_efficiency
    from assft.errors import BadInputError

    setup = tmp_path / "setup.json"
    setup.write_text(
        json.dumps(
            {"n": 40, "data_seed": 11, "model": "demo", "views": 2, "finetune": {"iterations": 40}}
        )
    )
    with pytest.raises(BadInputError, match=r"another setup \(finetune, views differ\)"):
        run_label_efficiency(tmp_path, views=1, iterations=60)
    with pytest.raises(BadInputError, match="unknown strategies \\['bald'\\]"):
        run_label_efficiency(tmp_path, strategies=("attsq", "bald"))
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_svg_charts_are_well_formed():
    import xml.etree.ElementTree as ET

    for svg in (
        scatter_svg(
            [
                {"x": 1.0, "y": 2.0, "label": "a", "highlight": True},
                {"x": 2.0, "y": 1.0, "label": "b"},
            ],
            x="x",
            y="y",
            title="t",
        ),
        bars_svg(
            {"ours": {"gm": 0.8, "wm": 0.9}, "random": {"gm": 0.7, "wm": float("nan")}}, title="t"
        ),
        lines_svg(
            {"attsq": [(2, 0.7, 0.1), (4, 0.8, 0.05)]}, title="t", x_label="B", y_label="Dice"
        ),
    ):
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg") and len(list(root)) > 3


@skip_without_template()
def test_bench_label_efficiency_end_to_end_and_resumes(tmp_path):
    """The benchmark's whole path on a tiny grid: sample data, the shipped demo model, every mode,
    random at 2B, the ceiling, per-scan Dice, signals, BENCHMARKS section; a rerun adds nothing."""
    out, markdown_file = tmp_path / "le", tmp_path / "BENCHMARKS.md"
    markdown_file.write_text("# Benchmarks\n\nkept text\n")
    args = [
        "bench",
        "label-efficiency",
        "--out",
        str(out),
        "--n",
        "8",
        "--budgets",
        "1",
        "--seeds",
        "0",
        "--iterations",
        "2",
        "--views",
        "1",
        "--strategies",
        "attsq,random",
        "--modes",
        "selective,none",
        "--no-ablations",
        "--device",
        "cpu",
        "--json",
    ]
    document = json.loads(run_cli(*args, "--markdown", str(markdown_file), check=True).stdout)
    assert document["setup"]["pool"] == 6 and document["setup"]["test"] == 2
    runs = {(r["strategy"], r["mode"], r["budget"], r["variant"]) for r in document["runs"]}
    assert runs == {(s, m, 1, "") for s in ("attsq", "random") for m in ("none", "selective")} | {
        ("random", "selective", 2, ""),
        ("random", "none", 4, CEILING),
    }
    # Two pool scans are the lab's validation set: never selected, labeled once, held out; the
    # ceiling labels the other four.
    held_out = document["setup"]["held_out"]
    assert len(held_out) == 2 and document["setup"]["selectable"] == 4
    test_ids = [c["case_id"] for c in document["test_cases"]]
    assert len(test_ids) == 2
    for run in document["runs"]:
        assert list(run["test_per_case"]) == test_ids
        assert run["test_dice"] == pytest.approx(
            np.mean(list(run["test_per_case"].values())), abs=0.05
        )
        assert len(run["selected"]) == run["budget"]
        assert not set(run["selected"]) & set(held_out) and run["held_out"] == held_out
        # The gate compared the new version with its parent on the held-out scans.
        assert 0.0 <= run["validation_dice"] <= 1.0
        assert 0.0 <= run["parent_validation_dice"] <= 1.0
        assert run["promoted"] == (run["validation_dice"] >= run["parent_validation_dice"])
        # Transductive: Dice on the pool scans left unlabeled, against the pretrained model's.
        if run["variant"] == CEILING:
            assert run["pool_dice"] is None
        else:
            assert 0.0 <= run["pool_dice"] <= 1.0 and 0.0 <= run["pool_dice_pretrained"] <= 1.0
        assert run["learning_curve"]["validation"][0][:2] == [1, 0]
    assert document["gate"]["promoted_worse_on_held_out"] == 0
    assert [g["goal"] for g in document["payoff"]] == [
        "ceiling >= pretrained + 0.15",
        "ceiling above random at budget 1 (more labels bring more)",
        "random at budget 1 >= pretrained + 0.05",
    ]
    # No strategy of this grid needs MC dropout: its passes (and its signal) are left out.
    assert set(document["signals_against_failure"]) == {
        "knowledge gap (bn)",
        "knowledge gap (prototype)",
        "ASD",
        "ATTSQ score S",
        "mean entropy",
    }
    assert all(-1.0 <= rho <= 1.0 for rho in document["signals_against_failure"].values())
    text = markdown_file.read_text(encoding="utf-8")
    assert (
        "kept text" in text
        and "| attsq | selective | - |" in text
        and "Ceiling of the recipe" in text
    )
    assert "--json" not in text  # the recorded command keeps only what changes the results
    # Rerun: every run is found in runs.jsonl, none is repeated.
    lines = (out / "runs.jsonl").read_text()
    again = json.loads(run_cli(*args, "--markdown", "", check=True).stdout)
    assert (out / "runs.jsonl").read_text() == lines
    assert again["runs"] == document["runs"]


def test_recipe_ablations_and_modes_in_the_plan():
    from assft.apps.label_efficiency_grid import RECIPE_ABLATIONS
    from assft.apps.label_efficiency_report import markers

    plan = planned_runs([2], [0, 1, 2], ablations=(), modes=("selective", "none"))
    assert {r["mode"] for r in plan} == {"selective", "none"}
    assert not any(r.get("variant") for r in plan)
    with_recipe = planned_runs(
        [2, 4], [0], ablations=(), modes=("none",), recipe_ablations=True, pool_size=20
    )
    changed = [r for r in with_recipe if r.get("finetune")]
    # Each recipe choice once per seed, at the smallest budget, random picks, supervised.
    assert [r["variant"] for r in changed] == list(RECIPE_ABLATIONS)
    assert {(r["strategy"], r["mode"], r["budget"]) for r in changed} == {("random", "none", 2)}
    assert changed[0]["finetune"] == {"freeze_batchnorm": True}
    # Random at twice the budget runs with a mode of the grid.
    assert {r["mode"] for r in with_recipe if r["budget"] == 8} == {"none"}
    assert markers("t2") == (
        "<!-- bench:label-efficiency:t2:begin -->",
        "<!-- bench:label-efficiency:t2:end -->",
    )
    assert markers("mixed") == markers(None)
    assert markers("t2", rounds=2) == (
        "<!-- bench:label-efficiency:t2:rounds2:begin -->",
        "<!-- bench:label-efficiency:t2:rounds2:end -->",
    )
    # Another model's figures go in a section of their own, never over the demo model's.
    assert markers("t2", model="foundation-demo")[0] == (
        "<!-- bench:label-efficiency:t2:foundation-demo:begin -->"
    )
    assert re.fullmatch(
        r"<!-- bench:label-efficiency:mixed:scratch_unet-[0-9a-f]{6}:end -->",
        markers(None, model="/labs/x/scratch_unet.json")[1],
    )
    assert re.fullmatch(
        r"<!-- bench:label-efficiency:t2:nnunet-T__P__3d-[0-9a-f]{6}:begin -->",
        markers("t2", model="nnunet:/r/Dataset1_X/T__P__3d")[0],
    )
    begin, end = markers("t2", model="/x/a-->b <i>.json")
    assert begin.count("-->") == end.count("-->") == 1 and "<i>" not in begin


def test_a_candidate_recipe_repeats_the_grid_beside_the_default_one():
    from assft.apps.label_efficiency_grid import candidate_name

    candidate = {"schedule": "constant", "intensity_augment": False}
    default = planned_runs([2], [0, 1], modes=("selective", "none"), pool_size=20)
    plan = planned_runs(
        [2],
        [0, 1],
        modes=("selective", "none"),
        pool_size=20,
        recipe_ablations=True,
        candidate=candidate,
    )
    name = candidate_name(candidate)
    assert name == 'recipe: intensity_augment=false, schedule="constant"'
    again = [r for r in plan if r.get("variant", "").startswith(name)]
    grid = [r for r in default if r.get("variant", "") in ("", CEILING)]
    # Every run of the grid once more, the same picks and seeds, with the candidate's settings.
    assert [(r["strategy"], r["mode"], r["budget"], r["seed"]) for r in again] == [
        (r["strategy"], r["mode"], r["budget"], r["seed"]) for r in grid
    ]
    assert all(r["finetune"] == candidate for r in again)
    assert {r["variant"] for r in again if r["budget"] == 20} == {f"{name}; {CEILING}"}
    assert not any(r.get("query") for r in again)  # the ablations are not repeated
    assert len({run_key(r) for r in plan}) == len(plan)  # each run its own place in runs.jsonl


def test_payoff_goals_read_the_ceiling_and_the_smallest_budget():
    from assft.apps.label_efficiency_goals import payoff_goals

    table = [
        {"strategy": "random", "mode": "none", "variant": "", "budget": 2, "mean": 0.66},
        {"strategy": "random", "mode": "none", "variant": CEILING, "budget": 28, "mean": 0.78},
    ]
    table[1]["std"] = 0.01
    goals = {g["goal"]: g for g in payoff_goals(table, 0.20, [2])}
    assert goals["ceiling >= pretrained + 0.15"]["holds"]
    assert goals["ceiling >= pretrained + 0.15"]["margin"] == pytest.approx(0.43)
    assert goals["ceiling above random at budget 2 (more labels bring more)"]["holds"]
    assert goals["random at budget 2 >= pretrained + 0.05"]["margin"] == pytest.approx(0.41)
    short = {g["goal"]: g for g in payoff_goals(table, 0.70, [2])}
    assert not short["ceiling >= pretrained + 0.15"]["holds"]
    assert not short["random at budget 2 >= pretrained + 0.05"]["holds"]


def test_models_shows_the_learning_curve_in_one_line():
    from assft.training.curves import describe_curve

    curve = {
        "steps": {"1": 300, "2": 300},
        "loss": [[1, 1, 1.25], [2, 300, 0.31]],
        "validation": [[1, 0, 0.19], [1, 150, 0.6], [2, 300, 0.65]],
        "best": {"stage": 2, "step": 300, "validation_dice": 0.65},
    }
    assert describe_curve(curve) == (
        "steps 300 + 300; loss 1.250 -> 0.310; held-out Dice by step 0:0.190 150:0.600 "
        "600:0.650; kept step 600 (0.6500)"
    )
    assert describe_curve(None) == ""


def test_the_demo_says_whether_the_loop_paid_off_and_shows_cases_and_curves():
    from assft.apps.demo import demo_report, verdict

    assert verdict(0.19, 0.71, 0.70) == (
        "fine-tuning on ATTSQ's picks lifted test Dice from 0.1900 to 0.7100; "
        "ATTSQ beat random by 0.0100."
    )
    assert verdict(0.19, 0.69, 0.70).endswith("ATTSQ did not beat random here (0.6900 vs 0.7000).")
    assert verdict(0.80, 0.70, 0.75).startswith("fine-tuning did not beat the pretrained model")
    measured = {"difference": 0.05, "ci95": 0.02, "seeds": 5}
    assert verdict(0.19, 0.71, 0.70, measured).endswith(
        "Over 5 seeds the benchmark measured ATTSQ minus random at +0.0500 ± 0.0200 (95 % "
        "interval) on this archive at this budget (BENCHMARKS.md)."
    )
    curve = {
        "steps": {"1": 4, "2": 4},
        "loss": [[1, 2, 1.0], [1, 4, 0.8], [2, 4, 0.5]],
        "validation": [[1, 0, 0.2], [1, 4, 0.6], [2, 4, 0.65]],
        "best": {"stage": 2, "step": 4, "validation_dice": 0.65},
    }
    run = {
        "test_dice": 0.7,
        "test_per_structure": {"gm": 0.7},
        "test_per_case": {"t2_003": 0.7},
        "learning_curve": curve,
    }
    summary = {
        "test": ["t2_003"],
        "strata": {"t2_003": "t2", "t2_001": "t2"},
        "verdict": verdict(0.2, 0.7, 0.7),
        "ranking": {"selected": ["t2_001"]},
        "ranked_cases": [
            {
                "rank": 1,
                "case": "t2_001",
                "score": 1.0,
                "dkd": 0.5,
                "asd": 0.4,
                "hardest_structure": "gm",
                "reason": "r",
                "selected": True,
            },
            {
                "rank": 2,
                "case": "t2_002",
                "score": 0.5,
                "dkd": 0.1,
                "asd": 0.2,
                "hardest_structure": None,
                "reason": "r",
                "selected": False,
            },
        ],
        "results": {
            "pretrained": {
                "mean_dice": 0.2,
                "per_structure": {"gm": 0.2},
                "test_per_case": {"t2_003": 0.2},
            },
            "attsq + selective SSFT": run,
            "random + selective SSFT": run,
        },
    }
    page = demo_report(summary)
    for section in ("Verdict", "Dice per test scan", "Training loss", "Held-out Dice while"):
        assert section in page
    assert page.count("<svg") == 4 and "t2_003" in page
    assert "per acquisition" in page and "<th>t2</th>" in page


def test_a_budget_over_several_rounds_is_checked_against_the_pool_before_anything_runs(tmp_path):
    from assft.apps.label_efficiency import run_label_efficiency
    from assft.errors import BadInputError

    # 12 sample scans: 9 for the pool. Budget 4 fits two rounds (8 labels), not three (12):
    # refused in one line before any data is made.
    with pytest.raises(BadInputError, match="budget 4 over 3 rounds needs a pool of at least 12"):
        run_label_efficiency(tmp_path / "out", n=12, budgets=[4], seeds=[0], rounds=3)
    assert not (tmp_path / "out").exists()


def test_paired_differences_intervals_area_and_acquisitions():
    from assft.apps.selection_stats import (
        area_under_curve,
        dice_by_stratum,
        paired_differences,
        selection_goals,
        t_interval,
    )

    # t-interval: mean 2, sample std 1, n = 4: 3.182 * 1 / 2.
    mean, half, n = t_interval([1.0, 2.0, 3.0, 2.0 + 0.0])
    assert (mean, n) == (2.0, 4) and half == pytest.approx(3.182 * np.std([1, 2, 3, 2], ddof=1) / 2)
    assert math.isnan(t_interval([0.5])[1]) and t_interval([])[2] == 0

    def run(strategy, budget, seed, dice, per_case=None, variant=""):
        return {
            "strategy": strategy,
            "mode": "selective",
            "budget": budget,
            "seed": seed,
            "test_dice": dice,
            "variant": variant,
            "test_per_case": per_case or {},
        }

    results = [
        run("random", 2, 0, 0.60, {"a": 0.8, "b": 0.4}),
        run("random", 2, 1, 0.70, {"a": 0.9, "b": 0.5}),
        run("random", 2, 2, 0.65, {"a": 0.9, "b": 0.4}),
        run("attsq", 2, 0, 0.66, {"a": 0.8, "b": 0.5}),
        run("attsq", 2, 1, 0.75, {"a": 0.8, "b": 0.7}),
        run("attsq", 2, 2, 0.70, {"a": 0.8, "b": 0.6}),
        run("attsq", 2, 0, 0.50, variant="anchor=off"),
        run("random", 4, 0, 0.70),
        run("attsq", 4, 0, 0.80),
        run("dkd", 2, 0, 0.70),
        run("dkd", 2, 1, 0.70),
        run("dkd", 2, 2, 0.70),
    ]
    paired = {(r["strategy"], r["variant"], r["budget"]): r for r in paired_differences(results)}
    # Seed by seed: +0.06, +0.05, +0.05.
    attsq = paired[("attsq", "", 2)]
    assert attsq["difference"] == pytest.approx(0.16 / 3) and attsq["n"] == 3
    assert attsq["lower"] > 0
    assert paired[("attsq", "anchor=off", 2)]["difference"] == pytest.approx(-0.10)
    assert ("random", "", 2) not in paired
    goals = {g["goal"]: g for g in selection_goals(results)}
    beats_random = goals[
        "ATTSQ + selective SSFT beats random + selective SSFT by more than the paired 95 % "
        "interval at budget 2"
    ]
    assert beats_random["holds"] and beats_random["pairs"] == 3
    beats_dkd = goals[
        "ATTSQ + selective SSFT beats DKD alone by more than the paired 95 % interval at budget 2"
    ]
    # -0.04, +0.05, 0.0: the interval covers 0.
    assert beats_dkd["margin"] == pytest.approx(0.01 / 3) and not beats_dkd["holds"]
    table = [
        {"strategy": "attsq", "mode": "selective", "variant": "", "budget": 2, "mean": 0.7},
        {"strategy": "attsq", "mode": "selective", "variant": "", "budget": 4, "mean": 0.8},
        {"strategy": "attsq", "mode": "selective", "variant": "", "budget": 8, "mean": 0.8},
    ]
    # (2 * 0.75 + 4 * 0.8) / 6.
    assert area_under_curve(table)[0]["auc"] == pytest.approx((1.5 + 3.2) / 6)
    strata = dice_by_stratum(results, {"a": "t1", "b": "t2"}, {"a": 0.9, "b": 0.2})
    assert strata["pretrained"] == {"t1": 0.9, "t2": 0.2} and strata["worst_pretrained"] == 0.2
    row = next(
        r for r in strata["rows"] if (r["strategy"], r["budget"], r["variant"]) == ("attsq", 2, "")
    )
    assert row["strata"]["t1"]["mean"] == pytest.approx(0.8)
    assert row["strata"]["t1"]["change"] == pytest.approx(-0.1)
    assert row["strata"]["t2"]["change"] == pytest.approx(0.4)
    assert row["worst"] == pytest.approx(0.6)  # each seed's worse acquisition: 0.5, 0.7, 0.6
