"""``assft demo``: the annotation loop end to end on built-in synthetic scans.

It writes a small pool with ground truth, creates a workspace with the demo model preset,
ranks the pool with ATTSQ, lets a simulated clinician (the ground truth) label the selected
cases through the validated submit path, and ranks again with those labels in the diversity term.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from assft.progress import Progress


def run_demo(out: Path, *, quick: bool = True, device: str = "auto", progress: Progress | None = None) -> dict[str, Any]:
    """Run the demo loop in ``out`` and return its summary (also ``out/demo.json``)."""
    from assft.config import QueryConfig
    from assft.ranking import rank_workspace
    from assft.synthetic import write_synthetic_pool
    from assft.projects import create_workspace

    progress = progress or Progress("none")
    n_cases, size, budget = (10, 32, 3) if quick else (24, 48, 4)
    if (out / "workspace").exists():
        shutil.rmtree(out / "workspace")
    cases = write_synthetic_pool(out / "data", n_cases, seed=7, size=size)
    truth = {c.case_id: c.label for c in cases}
    # The synthetic outer shell and core stand in for the demo model's grey and white matter.
    workspace = create_workspace(out / "workspace", [out / "data" / "images"], model="demo")
    rounds = []
    for round_index in range(2):
        config = QueryConfig(budget=budget, seed=round_index)
        document = rank_workspace(workspace, config, device=device, progress=progress)
        for case_id in document["selected"]:
            workspace.submit_label(case_id, truth[case_id], user="simulated-clinician")
        rounds.append(
            {
                "ranking": document["file"],
                "model_version": document["model_version"],
                "cold_start": document["cold_start"],
                "gap_estimator": document["notes"].get("gap_estimator"),
                "selected": document["selected"],
                "top": [
                    {k: row[k] for k in ("case", "rank", "score", "dkd", "asd", "reason")}
                    for row in document["cases"][: budget + 2]
                ],
                "seconds": document["seconds"],
            }
        )
    summary = {"workspace": str(workspace.root), "rounds": rounds, **workspace.status_summary()}
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def print_demo(summary: dict[str, Any]) -> None:
    """A readable account of the demo."""
    for i, round_ in enumerate(summary["rounds"], start=1):
        print(
            f"\nRound {i}: model {round_['model_version']}, DKD gap estimator "
            f"{round_['gap_estimator']}{' (cold start)' if round_['cold_start'] else ''}, "
            f"{round_['seconds']:.1f} s"
        )
        print(f"{'rank':>4}  {'case':<10} {'score':>6} {'DKD':>8} {'ASD':>6}  reason")
        for row in round_["top"]:
            asd = f"{row['asd']:.3f}" if row["asd"] is not None else "-"
            dkd = f"{row['dkd']:.4f}" if row["dkd"] is not None else "-"
            print(f"{row['rank']:>4}  {row['case']:<10} {row['score']:>6.3f} {dkd:>8} {asd:>6}  {row['reason']}")
        print(f"  labeled by the simulated clinician: {', '.join(round_['selected'])}")
    counts = summary["counts"]
    print(f"\nWorkspace {summary['workspace']}: {counts}")
