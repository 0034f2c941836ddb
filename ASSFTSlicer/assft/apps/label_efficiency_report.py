"""The label-efficiency benchmark's report: its BENCHMARKS.md section (one per site, number of
rounds and model), the test scans described, the Dice-against-budget plot.

:mod:`assft.apps.label_efficiency` runs the grid and writes the document this module renders.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from assft.apps.report import lines_svg
from assft.apps.selection_stats import selection_markdown
from assft.apps.sites import MIXED

MARK_BEGIN = "<!-- bench:label-efficiency:begin -->"
MARK_END = "<!-- bench:label-efficiency:end -->"
CEILING = "every pool case labeled"


def markers(site: str | None, rounds: int = 1, model: str = "demo") -> tuple[str, str]:
    """The BENCHMARKS.md markers of a benchmark's section (one section per sample site, one per
    site and number of rounds beyond one, and one per site for each model other than the demo
    model, so that measuring another model never replaces the demo model's figures)."""
    if rounds > 1:
        name = f"{site or MIXED}:rounds{rounds}"
    elif (site is None or site == MIXED) and model == "demo":
        return MARK_BEGIN, MARK_END
    else:
        name = site or MIXED
    if model != "demo":
        name += f":{model_tag(model)}"
    return (
        f"<!-- bench:label-efficiency:{name}:begin -->",
        f"<!-- bench:label-efficiency:{name}:end -->",
    )


def model_tag(model: str) -> str:
    """A short name of a model for a section's markers: a preset's name; a preset file's stem,
    or the form and the folder's name of ``bundle:PATH`` and ``nnunet:PATH``, each followed by
    six hex digits of the whole reference's hash (two files of one name, in two folders, keep
    two sections). Any character but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, and
    ``--`` one ``-`` (a marker is an HTML comment, which ``--`` would end)."""
    form, _, path = (
        model.partition(":") if model.startswith(("bundle:", "nnunet:")) else ("", "", model)
    )
    named = not form and not path.endswith(".json") and "/" not in path and "\\" not in path
    if form:
        tag = f"{form}-{Path(path).name or path}"
    else:
        tag = Path(path).stem if path.endswith(".json") else path
    tag = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]", "_", tag)).rstrip("-") or "model"
    if named and tag == model:
        return tag
    return f"{tag}-{hashlib.sha256(model.encode('utf-8')).hexdigest()[:6]}"


def describe_test_scans(data: Path | None, pretrained: dict[str, float]) -> list[dict[str, Any]]:
    """Each test scan: what was done to it (from the sample data's manifest), pretrained Dice.

    Without sample data (``data`` None: a lab's own scans) nothing is known of the scans but
    their pretrained Dice."""
    if data is None:
        return [{"case_id": case_id, "pretrained": dice} for case_id, dice in pretrained.items()]
    manifest = json.loads((data / "manifest.json").read_text())
    described = {c["case"]: c for c in manifest["cases"]}
    rows = []
    for case_id, dice in pretrained.items():
        case = described.get(case_id, {})
        anatomy = [name for name in ("atrophy", "lesions") if case.get(name)]
        site = case.get("site")
        # A named site's scans share one acquisition: the site is what was done to them (an
        # archive's: the scan's own acquisition).
        if case.get("stratum") and case.get("stratum") != site:
            shifts = [f"{site}: {case['stratum']}"]
        elif site and site != MIXED:
            shifts = [f"site {site}"]
        else:
            shifts = case.get("shift_kinds", [])
        rows.append(
            {
                "case_id": case_id,
                "shifts": shifts,
                "anatomy": anatomy,
                "stratum": case.get("stratum"),
                "pretrained": dice,
            }
        )
    return rows


def dice_vs_budget_svg(document: dict[str, Any]) -> str:
    series: dict[str, list[tuple[float, float, float]]] = {}
    for row in document["table"]:
        if row["mode"] == "selective" and not row["variant"]:
            series.setdefault(row["strategy"], []).append((row["budget"], row["mean"], row["std"]))
        if row["strategy"] == "random" and row["mode"] == "none" and not row["variant"]:
            series.setdefault("random (supervised)", []).append(
                (row["budget"], row["mean"], row["std"])
            )
    return lines_svg(
        series,
        title="Test Dice against budget (mean and spread over seeds)",
        x_label="labeled cases",
        y_label="mean Dice",
    )


def per_test_scan(
    document: dict[str, Any],
    budget: int,
    strategies: tuple[str, ...] = ("attsq", "random", "dkd"),
) -> list[str]:
    """Markdown rows: each test scan's Dice, pretrained and after each strategy (selective SSFT,
    mean over seeds) at ``budget``: where a strategy's picks help or hurt."""
    cases = document.get("test_cases") or []
    if not cases:
        return []
    means: dict[str, dict[str, float]] = {}
    for strategy in strategies:
        runs = [
            r
            for r in document["runs"]
            if (r["strategy"], r["mode"], r["budget"], r.get("variant", ""))
            == (strategy, "selective", budget, "")
            and r.get("test_per_case")
        ]
        if runs:
            means[strategy] = {
                c["case_id"]: float(np.mean([r["test_per_case"][c["case_id"]] for r in runs]))
                for c in cases
            }
    # Sample scans say what was done to them; a lab's own scans are known by their names only.
    described = all("shifts" in case for case in cases)
    extra = "shifts | anatomy | " if described else ""
    lines = [
        f"Test Dice per test scan at budget {budget} (selective SSFT, mean over seeds):",
        "",
        f"| test scan | {extra}pretrained | " + " | ".join(means) + " |",
        "|---|" + ("---|---|" if described else "") + "---:|" + "---:|" * len(means),
    ]
    for case in cases:
        cells = [f"{means[s][case['case_id']]:.3f}" for s in means]
        about = (
            f"{', '.join(case['shifts']) or 'near source'} | {', '.join(case['anatomy']) or '-'} | "
            if described
            else ""
        )
        lines.append(
            f"| {case['case_id']} | {about}{case['pretrained']:.3f} | " + " | ".join(cells) + " |"
        )
    return lines


def markdown(document: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section."""
    setup = document["setup"]
    table = [row for row in document["table"] if row["variant"] != CEILING]
    ceiling = [row for row in document["table"] if row["variant"] == CEILING]
    budgets = sorted({row["budget"] for row in table} | set(setup["budgets"]))
    if setup.get("images"):
        pool = f"pool of {setup['pool']} labeled scans of `{setup['images']}`"
    else:
        pool = f"target pool of {setup['pool']} sample scans"
    site = setup.get("site")
    begin, end = markers(site, setup.get("rounds", 1), setup.get("model", "demo"))
    steps = (
        f"{setup['iterations']} + {setup['iterations']} fine-tuning steps"
        if setup.get("iterations")
        else "fine-tuning steps from the labeled set (50 epochs of patches, 300 to 4000 a stage)"
    )
    held_out = setup.get("held_out") or []
    lines = [
        begin,
        f"### Label efficiency{f': site `{site}`' if site else ''}"
        + (f", {setup['rounds']} rounds a run" if setup.get("rounds", 1) > 1 else ""),
        "",
        f"`{command}`: {pool}, {setup['test']} test scans never trained on"
        + (
            f"; {len(held_out)} pool scans labeled once as the validation set, as the product "
            f"proposes it (one per part of the archive by acquisition: {', '.join(held_out)}; "
            "held out: the promotion gate and the best checkpoint read them, each weighted by "
            "its part's share of the archive)"
            if held_out
            else ""
        )
        + f"; budgets {budgets}, seeds {setup['seeds']}, {steps}, {setup['views']} test-time "
        f"views, {setup['model']} model on {setup['device']}. Mean test Dice ± sample std over "
        "seeds"
        + (
            "; in brackets, the mean Dice gain over the pretrained model on the pool's scans "
            "that stayed unlabeled (transductive)"
            if any(row.get("pool_gain") is not None for row in table)
            else ""
        )
        + f". Pretrained model: **{document['pretrained']['mean_dice']:.4f}**.",
        "",
        "| strategy | mode | variant | " + " | ".join(f"B={b}" for b in budgets) + " |",
        "|---|---|---|" + "---:|" * len(budgets),
    ]
    rows: dict[tuple, dict[int, str]] = {}
    for row in table:
        key = (row["strategy"], row["mode"], row["variant"])
        pool_gain = row.get("pool_gain")
        rows.setdefault(key, {})[row["budget"]] = f"{row['mean']:.4f} ± {row['std']:.4f}" + (
            f" (pool {pool_gain:+.3f})" if pool_gain is not None else ""
        )
    for (strategy, mode, variant), cells in rows.items():
        lines.append(
            f"| {strategy} | {mode} | {variant or '-'} | "
            + " | ".join(cells.get(b, "-") for b in budgets)
            + " |"
        )
    signals = document.get("signals_against_failure") or {}
    gains = document.get("signals_against_gains") or {}
    if gains:
        measured_scans = len(document.get("marginal_gains") or {})
        lines += [
            "",
            "Does each signal follow what the model gets wrong, and what a label teaches it? "
            "Spearman's rho between each per-case signal and the pretrained model's failure "
            "(1 - Dice) on the pool, and each scan's marginal gain (test Dice gain when it is "
            f"the only scan labeled: budget 1, seed 0, selective SSFT; {measured_scans} scans):",
            "",
            "| signal | against failure | against marginal gain |",
            "|---|---:|---:|",
            *(
                f"| {name} | {signals.get(name, float('nan')):+.2f} | {rho:+.2f} |"
                for name, rho in gains.items()
            ),
        ]
    elif signals:
        lines += [
            "",
            "Do the per-case signals find the pool cases the pretrained model fails on? Spearman's "
            "rho between each signal and 1 - Dice of the pretrained model on the pool: "
            + "; ".join(f"{name} {rho:+.2f}" for name, rho in signals.items())
            + ".",
        ]
    for row in ceiling:
        lines += [
            "",
            f"Ceiling of the recipe ({CEILING}: {row['budget']} cases, supervised): "
            f"**{row['mean']:.4f} ± {row['std']:.4f}**.",
        ]
    gate = document.get("gate") or {}
    if gate.get("runs_with_held_out"):
        lines += [
            "",
            f"Promotion gate: {gate['promoted']} of {gate['runs_with_held_out']} fine-tuned "
            f"versions promoted ({gate.get('refused', 0)} refused; every round of a run counts); "
            f"promoted versions worse than their parent on the held-out scans: "
            f"**{gate['promoted_worse_on_held_out']}**.",
        ]
    measured = [*document.get("payoff", []), *document["goals"]]
    if measured:
        lines += ["", "Goals (measured, not asserted):", ""]
    for goal in measured:
        mark = "holds" if goal["holds"] else "**does not hold**"
        interval = (
            f" ± {goal['interval']:.4f}, {goal['pairs']} pairs"
            if goal.get("interval") is not None and goal["interval"] == goal["interval"]
            else ""
        )
        lines.append(
            f"- {goal['goal']}: {goal['ours']:.4f} vs {goal['other']:.4f} "
            f"(margin {goal['margin']:+.4f}{interval}): {mark}"
        )
    lines += selection_markdown(document)
    if not document.get("complete", True):
        lines += [
            "",
            f"**Not complete:** {document['runs_left']} planned runs have not run yet (the same "
            "command continues).",
        ]
    for budget in sorted({row["budget"] for row in table if row["strategy"] == "attsq"}):
        scans = per_test_scan(document, budget)
        if scans:
            lines += ["", *scans]
    lines.append(end)
    return "\n".join(lines)
