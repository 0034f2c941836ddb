"""``assft demo``: the whole loop on built-in sample scans, with the shipped pretrained model.

It builds a lab's archive from real anatomy (``assft sample-data --sites hospital``: 60 % of
the scans from a 3 T T1 scanner close to the model's source, 25 % FLAIR and 15 % T2, which the
T1-pretrained model segments poorly), labels the scans the product proposes as the validation
set (one per part of the archive), ranks the rest with ATTSQ, lets a simulated clinician (the
ground truth) label the top cases, fine-tunes with selective SSFT, and compares on test scans
never trained on, per acquisition: the pretrained model, ASSFT, and random selection with the
same budget and the same recipe. Beside its own single run it prints the margin that the
benchmark measured over seeds (``measured_margins.json``, from BENCHMARKS.md). It prints a table
and writes ``report.html`` (with per-case Dice and the learning curves) and ``demo.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from assft.apps.report import bars_svg, html_page, html_table, learning_curve_svgs, scatter_svg
from assft.apps.sampledata import write_sample_data
from assft.apps.simulation import SMALL_MODEL_FINETUNE, Dataset, Simulation
from assft.models.resources import resources_dir
from assft.query.config import QueryConfig, Strategy
from assft.runtime.progress import Progress

QUICK: dict[str, Any] = {"site": "hospital", "n": 24, "budget": 2, "views": 2}
FULL: dict[str, Any] = {"site": "hospital", "n": 40, "budget": 4, "views": 4}
"""The demo's settings; the fine-tuning steps follow the labeled set (the recipe's rule)."""

MARGINS_FILE = "measured_margins.json"
"""ATTSQ minus random, measured over seeds by the label-efficiency benchmark, per sample site
and budget (package data; ``Testing`` checks it against the benchmark's JSON)."""


def measured_margin(site: str, budget: int) -> dict[str, Any] | None:
    """What the benchmark measured for ``site`` at ``budget`` (None when it has not)."""
    path = resources_dir() / MARGINS_FILE
    try:
        margins = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = margins.get(site, {}).get(str(budget))
    return entry if isinstance(entry, dict) else None


def run_demo(
    out: Path, *, quick: bool = True, device: str = "auto", progress: Progress | None = None
) -> dict[str, Any]:
    """Run the demo in ``out``; returns the summary (also ``out/demo.json``)."""
    settings = QUICK if quick else FULL
    progress = progress or Progress("none")
    out.mkdir(parents=True, exist_ok=True)
    site = str(settings["site"])
    write_sample_data(
        out / "data", int(settings["n"]), n_source=0, sites=[site], seed=7, progress=progress
    )
    dataset = Dataset.from_sample_data(out / "data", site=site)
    simulation = Simulation(
        out,
        dataset,
        model="demo",
        device=device,
        views=settings["views"],
        epistemic=False,
        transductive=False,
        progress=progress,
    )
    finetune = {"mode": "selective", **SMALL_MODEL_FINETUNE}
    budget = int(settings["budget"])
    views = int(settings["views"])
    attsq_query = QueryConfig(strategy=Strategy("attsq"), budget=budget, seed=0, views=views)
    ranking = simulation.ranking(attsq_query)
    progress.emit("info", message="fine-tuning on the ATTSQ picks")
    attsq = simulation.run(attsq_query, finetune, keep=True)
    progress.emit("info", message="fine-tuning on random picks")
    random = simulation.run(
        QueryConfig(strategy=Strategy("random"), budget=budget, seed=0, views=views),
        finetune,
    )
    pretrained = simulation.pretrained_test_dice()
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    strata = {c["case"]: c.get("stratum") or site for c in manifest["cases"]}
    measured = measured_margin(site, budget)
    summary = {
        "settings": settings,
        "pool": [c.case_id for c in dataset.pool],
        "test": [c.case_id for c in dataset.test],
        "ranking": {k: ranking[k] for k in ("selected", "notes", "model_version", "cold_start")},
        "ranked_cases": ranking["cases"],
        "results": {
            "pretrained": {
                "mean_dice": pretrained["mean_dice"],
                "per_structure": pretrained["per_structure"],
                "test_per_case": pretrained["by_case"],
            },
            "attsq + selective SSFT": attsq.to_dict(),
            "random + selective SSFT": random.to_dict(),
        },
        "held_out": simulation.held_out,
        "strata": {c.case_id: strata.get(c.case_id, site) for c in dataset.pool + dataset.test},
        "measured_margin": measured,
        "verdict": verdict(pretrained["mean_dice"], attsq.test_dice, random.test_dice, measured),
        "workspace": str(out / "runs"),
        "scoring_seconds": round(simulation.scoring_seconds, 2),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.html").write_text(demo_report(summary))
    return summary


def verdict(
    pretrained: float, attsq: float, random: float, measured: dict[str, Any] | None = None
) -> str:
    """Did the loop pay off, did ATTSQ beat random here, and what the benchmark measured over
    seeds (``measured``: its ``difference``, ``ci95`` and ``seeds``)."""
    payoff = (
        f"fine-tuning on {'ATTSQ' if attsq >= random else 'random'}'s picks lifted test Dice "
        f"from {pretrained:.4f} to {max(attsq, random):.4f}"
        if max(attsq, random) > pretrained
        else f"fine-tuning did not beat the pretrained model ({pretrained:.4f}) here"
    )
    if attsq > random:
        versus = f"ATTSQ beat random by {attsq - random:.4f}"
    else:
        versus = f"ATTSQ did not beat random here ({attsq:.4f} vs {random:.4f})"
    sentence = f"{payoff}; {versus}."
    if measured:
        sentence += (
            f" Over {measured['seeds']} seeds the benchmark measured ATTSQ minus random at "
            f"{measured['difference']:+.4f} ± {measured['ci95']:.4f} (95 % interval) on this "
            "archive at this budget (BENCHMARKS.md)."
        )
    return sentence


def _per_structure(summary: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each compared model's test Dice per structure (None: not measured)."""
    results = summary["results"]
    structures = list(results["pretrained"]["per_structure"])
    table: dict[str, dict[str, float | None]] = {}
    for name, result in results.items():
        per = result.get("per_structure") or result.get("test_per_structure")
        table[name] = {s: per.get(s) for s in structures}
    return table


def _rows(summary: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Per compared model: its mean test Dice per acquisition of the archive, and overall."""
    results = summary["results"]
    strata = summary.get("strata") or {}
    names = sorted({strata[c] for c in summary["test"] if c in strata})
    rows: list[list[object]] = []
    for name, result in results.items():
        per_case = result.get("test_per_case", {})
        cells: list[object] = []
        for stratum in names:
            values = [d for c, d in per_case.items() if strata.get(c) == stratum]
            cells.append(sum(values) / len(values) if values else None)
        rows.append([name, *cells, result.get("mean_dice", result.get("test_dice"))])
    return ["model", *names, "mean Dice"], rows


def _per_case(summary: dict[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Each test scan's Dice under each compared model."""
    results = summary["results"]
    names = list(results)
    rows: list[list[object]] = []
    for case_id in summary["test"]:
        rows.append([case_id, *[results[n].get("test_per_case", {}).get(case_id) for n in names]])
    return ["test scan", *names], rows


def _curves(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    results = summary["results"]
    return {n: r["learning_curve"] for n, r in results.items() if r.get("learning_curve")}


def demo_report(summary: dict[str, Any]) -> str:
    """The HTML report: the DKD-vs-ASD scatter with the picks, Dice per structure, the table."""
    points = [
        {
            "dkd": r["dkd"],
            "asd": r["asd"],
            "label": f"#{r['rank']} {r['case']}",
            "highlight": r["selected"],
        }
        for r in summary["ranked_cases"]
    ]
    header, rows = _rows(summary)
    bars = _per_structure(summary)
    picks = summary["ranking"]["selected"]
    ranked = [
        [
            r["rank"],
            r["case"],
            r["score"],
            r["dkd"],
            r["asd"],
            r["hardest_structure"] or "-",
            r["reason"],
        ]
        for r in summary["ranked_cases"]
    ]
    return html_page(
        "ASSFT demo",
        [
            ("Result on held-out test scans, per acquisition", html_table(header, rows)),
            ("Verdict", f"<p>{html.escape(summary['verdict'])}</p>"),
            ("Dice per structure", bars_svg(bars, title="Test Dice per structure")),
            ("Dice per test scan", html_table(*_per_case(summary))),
            ("Learning curves", learning_curve_svgs(_curves(summary))),
            (
                "What ATTSQ picked",
                scatter_svg(
                    points, x="dkd", y="asd", title=f"DKD vs ASD (picked: {', '.join(picks)})"
                ),
            ),
            (
                "The worklist",
                html_table(["rank", "case", "score", "DKD", "ASD", "hardest", "reason"], ranked),
            ),
        ],
    )


def print_demo(summary: dict[str, Any]) -> None:
    """The table on the terminal."""
    header, rows = _rows(summary)
    print(
        f"\nTest Dice on {len(summary['test'])} held-out scans of the "
        f"{summary['settings']['site']} archive, per acquisition "
        f"(budget {summary['settings']['budget']} labeled cases):"
    )
    print("  ".join(f"{h:>24}" if i == 0 else f"{h[:14]:>14}" for i, h in enumerate(header)))
    for row in rows:
        cells = [f"{row[0]:>24}"] + [
            f"{v:>14.4f}" if isinstance(v, float) else f"{'-':>14}" for v in row[1:]
        ]
        print("  ".join(cells))
    strata = summary.get("strata") or {}
    picks = [f"{c} ({strata[c]})" if c in strata else c for c in summary["ranking"]["selected"]]
    random_picks = summary["results"]["random + selective SSFT"]["selected"]
    print(f"ATTSQ picked: {', '.join(picks)}")
    print(
        "random picked: "
        + ", ".join(f"{c} ({strata[c]})" if c in strata else c for c in random_picks)
    )
    print(summary["verdict"])
