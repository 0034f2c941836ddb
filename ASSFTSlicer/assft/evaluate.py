"""Scoring a model version against reference labels (``assft evaluate WS --truth DIR``).

Each workspace case with a reference label ``<truth_dir>/<case_id><suffix>`` is predicted on its
exact grid and compared with the reference by Dice, per structure; the document reports every
case, each structure's mean over cases and the overall mean.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.image_names import image_suffix, scanned_image_file
from assft.io.imaging import read_header, read_image, read_label
from assft.io.voxel_grids import geometry_mismatch
from assft.metrics import dice_scores, mean_dice
from assft.predict import Predictor
from assft.runtime.progress import Progress
from assft.workspace.workspace import Workspace

__all__ = ["evaluate_workspace", "find_truth_files"]


def find_truth_files(truth_dir: Path, case_ids: list[str]) -> dict[str, Path]:
    """The reference label of each case that has one: ``truth_dir/<case_id><suffix>``.

    Args:
        truth_dir: folder of reference labels.
        case_ids: the cases to look for.

    Returns:
        ``{case_id: path}`` for the cases found, in the order of ``case_ids``.

    Raises:
        BadInputError: ``truth_dir`` is not a folder; a case has several reference files.
    """
    if not truth_dir.is_dir():
        raise BadInputError(
            "does not exist" if not truth_dir.exists() else "is not a folder", truth_dir
        )
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(truth_dir.iterdir()):
        if scanned_image_file(path):
            by_stem.setdefault(path.name[: -len(image_suffix(path))], []).append(path)
    found: dict[str, Path] = {}
    for case_id in case_ids:
        matches = by_stem.get(case_id, [])
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            raise BadInputError(
                f"holds several reference labels for case {case_id!r} ({names})", truth_dir
            )
        if matches:
            found[case_id] = matches[0]
    return found


def _header(path: Path) -> sitk.ImageFileReader | None:
    """The geometry of a single-file 3D image from its header alone (None if not at hand)."""
    return read_header(path)


def _check_geometries(workspace: Workspace, truth_files: dict[str, Path]) -> None:
    """Refuse a reference whose header grid differs from its scan's, before any inference."""
    for case_id, truth_path in truth_files.items():
        truth = _header(truth_path)
        scan = _header(workspace.image_path(case_id))
        if truth is not None and scan is not None:
            mismatch = geometry_mismatch(truth, scan)
            if mismatch is not None:
                raise BadInputError(
                    f"does not fit the scan of case {case_id!r}: {mismatch}", truth_path
                )


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def evaluate_workspace(
    workspace: Workspace,
    truth_dir: Path | str,
    *,
    version: str | None = None,
    device: str = "auto",
    cases: list[str] | None = None,
    progress: Progress | None = None,
    views: int = 4,
) -> dict[str, Any]:
    """Dice of a model version's predictions against reference labels.

    Args:
        workspace: the open workspace.
        truth_dir: folder of reference labels named ``<case_id>`` plus an image suffix;
            values other than 0 and the workspace's label values are ignored.
        version: model version; None: the current one.
        device: ``auto``, ``cpu``, ``cuda``...
        cases: only these cases (e.g. the held-out ones); None: every case.
        progress: reports the ``evaluate`` phase.
        views: test-time views (1 to 8, :data:`~assft.models.inference.VIEW_FLIPS`).

    Returns:
        ``{"model_version", "truth_dir", "cases": [{"case", "status", "dice": {name:
        value|None}, "mean_dice", "seconds"}], "per_structure": {name: mean over cases|None},
        "mean_dice", "n_cases"}``. ``status`` is the case's registry status (labeled cases
        were seen in fine-tuning); a structure absent from both prediction and reference is
        None and left out of the means; ``mean_dice`` is the mean of ``per_structure``.

    Raises:
        BadInputError: no reference label for any of the cases (naming ``truth_dir``), a
            reference that is unreadable or does not fit its scan's grid (naming it), an
            unknown case, a bad version.
    """
    progress = progress or Progress("none")
    truth_dir = Path(truth_dir).expanduser().resolve()
    rows = {row["case_id"]: row for row in workspace.registry.cases()}
    if cases is None:
        case_ids = list(rows)
    else:
        case_ids = list(dict.fromkeys(workspace.check_case_id(c) for c in cases))
    truth_files = find_truth_files(truth_dir, case_ids)
    if not truth_files:
        raise BadInputError(
            f"holds no reference label named after any of the {len(case_ids)} case(s) "
            "(<case_id>.nii.gz, .nrrd, .mha...)",
            truth_dir,
        )
    _check_geometries(workspace, truth_files)

    started = time.perf_counter()
    predictor = Predictor(workspace, version=version, device=device, views=views)
    label_values = predictor.label_values
    names = workspace.config.label_names
    name_of = {value: names.get(value, str(value)) for value in label_values}
    progress.phase("evaluate", len(truth_files))
    results: list[dict[str, Any]] = []
    per_value: dict[int, list[float]] = {value: [] for value in label_values}
    for done, (case_id, truth_path) in enumerate(truth_files.items(), start=1):
        case_started = time.perf_counter()
        image = read_image(workspace.image_path(case_id))
        truth = read_label(truth_path)
        mismatch = geometry_mismatch(truth, image)
        if mismatch is not None:
            raise BadInputError(
                f"does not fit the scan of case {case_id!r}: {mismatch}", truth_path
            )
        label, _ = predictor.predict_image(image)
        scores = dice_scores(
            sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(truth), label_values
        )
        for value, score in scores.items():
            if not math.isnan(score):
                per_value[value].append(score)
        case_mean = mean_dice(scores)
        results.append(
            {
                "case": case_id,
                "status": rows[case_id]["status"],
                "dice": {name_of[value]: _round(score) for value, score in scores.items()},
                "mean_dice": _round(case_mean),
                "seconds": round(time.perf_counter() - case_started, 3),
            }
        )
        progress.update(
            done, case=case_id, mean_dice=None if math.isnan(case_mean) else round(case_mean, 4)
        )
    structure_means = {
        value: float(np.mean(scores)) if scores else math.nan for value, scores in per_value.items()
    }
    overall = mean_dice(structure_means)
    return {
        "model_version": predictor.version,
        "device": str(predictor.device),
        "has_head": predictor.has_head,
        "truth_dir": str(truth_dir),
        "cases": results,
        "per_structure": {name_of[v]: _round(m) for v, m in structure_means.items()},
        "mean_dice": _round(overall),
        "n_cases": len(results),
        "seconds": round(time.perf_counter() - started, 3),
    }
