"""Simulated annotation rounds and the label-efficiency summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from assft.apps.label_efficiency import (
    CEILING,
    STRATEGIES,
    goals,
    markdown,
    planned_runs,
    summarise,
)
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
    assert set(signals) == {"knowledge gap (bn)", "ASD", "mean entropy", "epistemic (MC dropout)"}
    assert all(-1.0 <= rho <= 1.0 for rho in signals.values())
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
    # Per seed and budget: 8 strategies x 3 modes and two ablations; random at budget 8 (twice 4).
    assert len(plan) == 2 * 2 * (8 * 3 + 2) + 2
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
        "--no-ablations",
        "--device",
        "cpu",
        "--json",
    ]
    document = json.loads(run_cli(*args, "--markdown", str(markdown_file), check=True).stdout)
    assert document["setup"]["pool"] == 6 and document["setup"]["test"] == 2
    runs = {(r["strategy"], r["mode"], r["budget"], r["variant"]) for r in document["runs"]}
    assert runs == {
        (s, m, 1, "") for s in ("attsq", "random") for m in ("none", "all", "selective")
    } | {("random", "selective", 2, ""), ("random", "none", 6, CEILING)}
    test_ids = [c["case_id"] for c in document["test_cases"]]
    assert len(test_ids) == 2
    for run in document["runs"]:
        assert list(run["test_per_case"]) == test_ids
        assert run["test_dice"] == pytest.approx(
            np.mean(list(run["test_per_case"].values())), abs=0.05
        )
        assert len(run["selected"]) == run["budget"]
    assert set(document["signals_against_failure"]) == {
        "knowledge gap (bn)",
        "ASD",
        "mean entropy",
        "epistemic (MC dropout)",
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
