"""``assft bench partial-labels``: a lab labels only some of the model's structures.

A lab corrects one structure of a many-structure model (the liver of TotalSegmentator; here, by
default, the demo model's cerebrospinal fluid, its weakest). The clinician's labels then hold
that structure alone. Three ways of fine-tuning on them, on the same picks, held-out scans and
seeds:

- ``every structure labeled``: the ground truth of every structure (the reference: what full
  labels would give);
- ``labeled structures only``: the workspace records the labeled structures
  (``assft init --labeled-structures``), and each label is completed from the parent
  (:mod:`assft.training.partial_labels`);
- ``others as background``: the same partial labels in a workspace that takes them as complete
  (what a lab gets without the setting).

On the test scans, never trained on: each structure's Dice against the truth, and for the
structures nobody labeled, the Dice of the version's prediction against the parent's (1: the
fine-tune did not move them). The issue's goal: within 0.02 of the parent's, i.e. at least 0.98.
The figures are of the version each job made, promoted or not (the gate's verdict is recorded
beside them), since the question is what fine-tuning did to the structures, not what the gate
kept.

Held-out scans: two of the pool, drawn per seed, the same for the three ways; picks: ``budget``
scans of the rest, drawn per seed (random selection: the question is the labels, not the
selection).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.apps.sampledata import write_sample_data
from assft.apps.selection_stats import t_interval
from assft.apps.simulation import SMALL_MODEL_FINETUNE, Case, Dataset
from assft.errors import BadInputError
from assft.io.imaging import read_image, read_label, write_image_atomic
from assft.metrics.overlap import dice_scores, mean_per_structure
from assft.models import get_preset
from assft.predict import Predictor
from assft.runtime.progress import Progress
from assft.training.config import FinetuneConfig
from assft.training.finetune import run_finetune
from assft.workspace import Workspace
from assft.workspace.config import parse_structures
from assft.workspace.creation import create_workspace

__all__ = ["MARK_BEGIN", "MARK_END", "WAYS", "markdown", "run_partial_labels"]

MARK_BEGIN = "<!-- bench:partial-labels:begin -->"
MARK_END = "<!-- bench:partial-labels:end -->"

FULL, COMPLETED, BACKGROUND = (
    "every structure labeled",
    "labeled structures only",
    ("others as background"),
)
WAYS = (FULL, COMPLETED, BACKGROUND)
HELD_OUT = 2
GOAL = 0.98
"""The unlabeled structures' Dice against the parent's predictions: within 0.02 of it."""


def _partial_label(truth: Path, values: list[int], out: Path) -> Path:
    """The truth with every structure but ``values`` erased (a clinician drew those alone)."""
    label = read_label(truth)
    array = sitk.GetArrayFromImage(label)
    kept = np.where(np.isin(array, values), array, 0).astype(array.dtype)
    image = sitk.GetImageFromArray(kept)
    image.CopyInformation(label)
    return write_image_atomic(image, out / truth.name)


def _predictor_arrays(
    workspace: Workspace, version: str, cases: list[Case], *, device: str, views: int
) -> list[np.ndarray]:
    predictor = Predictor(workspace, version=version, device=device, views=views)
    return [sitk.GetArrayFromImage(predictor.predict_image(read_image(c.image))[0]) for c in cases]


def _away_from(
    made: np.ndarray, parent: np.ndarray, labeled: list[int], others: list[int]
) -> dict[int, float]:
    """Dice of ``made`` against ``parent`` per structure of ``others``, over the voxels neither
    gives to a labeled structure: what moved besides the boundary the clinician corrected."""
    away = ~np.isin(made, labeled) & ~np.isin(parent, labeled)
    return dice_scores(np.where(away, made, 0), np.where(away, parent, 0), others)


def run_partial_labels(
    out: Path,
    *,
    site: str = "t2",
    n: int = 24,
    seeds: tuple[int, ...] = (0, 1, 2),
    budget: int = 4,
    structures: str = "cerebrospinal fluid",
    model: str = "demo",
    device: str = "auto",
    views: int = 2,
    iterations: int | None = None,
    dataset: Dataset | None = None,
    progress: Progress | None = None,
    candidate: dict[str, Any] | None = None,
    ways: tuple[str, ...] = WAYS,
) -> dict[str, Any]:
    """Run the ``ways`` (default the three) on ``site`` over ``seeds``; returns the document
    (also ``out/partial-labels.json``). ``iterations``: steps per stage (default: the recipe's
    rule); ``dataset``: scans with their truth instead of the sample site (``site`` and ``n``
    unused); ``candidate``: fine-tuning settings of a fourth way, the labeled structures only
    with them (:func:`candidate_way` names it)."""
    candidate_name = candidate_way(candidate) if candidate else None
    if candidate:
        FinetuneConfig.from_dict(dict(candidate))  # refused before anything is written
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        raise BadInputError(f"unknown ways {unknown}; known: {', '.join(WAYS)}")
    plan = [*ways, *([candidate_name] if candidate_name else [])]
    progress = progress or Progress("none")
    out.mkdir(parents=True, exist_ok=True)
    source = site if dataset is None else "given scans"
    if dataset is None:
        write_sample_data(out / "data", n, n_source=0, sites=[site], seed=7, progress=progress)
        dataset = Dataset.from_sample_data(out / "data", site=site)
    names = dict(get_preset(model).label_names or {1: "foreground"})
    values = sorted(names)
    labeled = parse_structures(structures, names)
    others = [v for v in values if v not in labeled]
    partial_folder = out / "partial-labels"
    partial = {c.case_id: _partial_label(c.truth, labeled, partial_folder) for c in dataset.pool}
    truth = {c.case_id: c.truth for c in dataset.pool}
    test_truth = [sitk.GetArrayFromImage(read_label(c.truth)) for c in dataset.test]

    base = out / "base"
    if base.exists():
        shutil.rmtree(base)
    base_workspace = create_workspace(base, [c.image for c in dataset.pool], model=model)
    parent = _predictor_arrays(base_workspace, "v0", dataset.test, device=device, views=views)
    parent_dice = mean_per_structure(
        [dice_scores(p, t, values) for p, t in zip(parent, test_truth, strict=True)], values
    )
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        ids = [c.case_id for c in dataset.pool]
        held_out = sorted(rng.choice(ids, HELD_OUT, replace=False).tolist())
        rest = [i for i in ids if i not in held_out]
        picks = sorted(rng.choice(rest, budget, replace=False).tolist())
        for way in plan:
            started = time.perf_counter()
            progress.emit("info", message=f"seed {seed}: {way}")
            folder = out / "runs" / f"s{seed}-{plan.index(way)}"
            if folder.exists():
                shutil.rmtree(folder)
            workspace = create_workspace(
                folder,
                [c.image for c in dataset.pool],
                model=model,
                labeled_structures=labeled if way in (COMPLETED, candidate_name) else None,
            )
            labels = truth if way == FULL else partial
            for case_id in picks + held_out:
                workspace.submit_label(case_id, labels[case_id], user="simulated-clinician")
            workspace.hold_out(held_out)
            steps = {"iterations": iterations, "semi_iterations": iterations} if iterations else {}
            config = FinetuneConfig.from_dict(
                {
                    "seed": seed,
                    "views": views,
                    "mode": "selective",
                    **SMALL_MODEL_FINETUNE,
                    **steps,
                    **(candidate if way == candidate_name and candidate else {}),
                }
            )
            manifest = run_finetune(workspace, config, device=device)
            made = _predictor_arrays(
                workspace, manifest["version"], dataset.test, device=device, views=views
            )
            dice = mean_per_structure(
                [dice_scores(p, t, values) for p, t in zip(made, test_truth, strict=True)], values
            )
            agreement = mean_per_structure(
                [dice_scores(m, p, others) for m, p in zip(made, parent, strict=True)], others
            )
            away = mean_per_structure(
                [_away_from(m, p, labeled, others) for m, p in zip(made, parent, strict=True)],
                others,
            )
            runs.append(
                {
                    "seed": seed,
                    "way": way,
                    "picks": picks,
                    "held_out": held_out,
                    "version": manifest["version"],
                    "promoted": bool(manifest.get("promoted")),
                    "dice": {names[v]: dice[v] for v in values},
                    "agreement_with_parent": {names[v]: agreement[v] for v in others},
                    "agreement_away_from_labeled": {names[v]: away[v] for v in others},
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            shutil.rmtree(folder, ignore_errors=True)
    document = {
        "site": source,
        "n": len(dataset.pool) + len(dataset.test),
        "budget": budget,
        "seeds": list(seeds),
        "model": model,
        "views": views,
        "labeled": [names[v] for v in labeled],
        "others": [names[v] for v in others],
        "pool": len(dataset.pool),
        "test": [c.case_id for c in dataset.test],
        "parent_dice": {names[v]: parent_dice[v] for v in values},
        "runs": runs,
        "candidate": candidate,
        "summary": summarise(runs, [names[v] for v in labeled], [names[v] for v in others], plan),
    }
    (out / "partial-labels.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def candidate_way(candidate: dict[str, Any]) -> str:
    """The name of the candidate recipe's way: ``labeled structures only, key=value, ...``."""
    settings = ", ".join(f"{k}={v}" for k, v in sorted(candidate.items()))
    return f"{COMPLETED}, {settings}"


def summarise(
    runs: list[dict[str, Any]],
    labeled: list[str],
    others: list[str],
    ways: list[str] | tuple[str, ...] = WAYS,
) -> list[dict[str, Any]]:
    """Per way: mean and 95 % half-width over seeds of each figure."""
    rows = []
    for way in ways:
        mine = [r for r in runs if r["way"] == way]
        if not mine:
            continue
        row: dict[str, Any] = {"way": way, "promoted": sum(r["promoted"] for r in mine)}
        row["runs"] = len(mine)
        for name in labeled + others:
            row[f"dice:{name}"] = list(t_interval(r["dice"][name] for r in mine)[:2])
        for name in others:
            values = [r["agreement_with_parent"][name] for r in mine]
            row[f"agreement:{name}"] = list(t_interval(values)[:2])
            values = [r["agreement_away_from_labeled"][name] for r in mine]
            row[f"away:{name}"] = list(t_interval(values)[:2])
        row["worst agreement"] = min(
            (min(r["agreement_with_parent"].values(), default=1.0) for r in mine), default=1.0
        )
        rows.append(row)
    return rows


def _cell(pair: list[float] | tuple[float, float]) -> str:
    mean, half = pair
    return f"{mean:.3f}" + (f" ± {half:.3f}" if np.isfinite(half) else "")


def markdown(document: dict[str, Any], command: str) -> str:
    """The section of BENCHMARKS.md."""
    labeled, others = document["labeled"], document["others"]
    head = ["way"] + [f"{n} Dice (labeled)" for n in labeled]
    head += [f"{n} Dice" for n in others] + [f"{n} vs parent" for n in others]
    head += [f"{n} vs parent, away from {' and '.join(labeled)}" for n in others]
    head += ["worst vs parent", "promoted"]
    lines = [
        MARK_BEGIN,
        "## Labeling some of the structures (`assft bench partial-labels`)",
        "",
        f"Site `{document['site']}`, {document['pool']} pool scans, "
        f"{len(document['test'])} test scans; {document['budget']} random picks and "
        f"{HELD_OUT} held-out scans per seed, seeds {document['seeds']}; the clinician labels "
        f"{', '.join(labeled)} only. Mean ± 95 % interval over seeds, on the test scans, of the "
        'version each job made (promoted or not). "vs parent": Dice of its prediction against '
        f'the parent\'s for a structure nobody labeled (goal: at least {GOAL}); "away from": '
        "the same over the voxels that neither gives to a labeled structure (what moved besides "
        "the boundary the clinician corrected).",
        "",
        "Parent (pretrained): "
        + ", ".join(f"{k} {v:.3f}" for k, v in document["parent_dice"].items())
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in document["summary"]:
        cells = [row["way"]]
        cells += [_cell(row[f"dice:{n}"]) for n in labeled + others]
        cells += [_cell(row[f"agreement:{n}"]) for n in others]
        cells += [_cell(row[f"away:{n}"]) for n in others]
        cells += [f"{row['worst agreement']:.3f}", f"{row['promoted']}/{row['runs']}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`", MARK_END]
    return "\n".join(lines)
