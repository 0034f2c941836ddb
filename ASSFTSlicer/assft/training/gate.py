"""The promotion gate: a new version becomes current only when its held-out Dice is not worse
than its parent's. The held-out Dice weighs each held-out scan by the share of the archive its
part holds, and the gate records the change per part (:mod:`assft.query.parts`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from assft.query.parts import ArchiveParts

__all__ = [
    "archive_weights",
    "change_by_part",
    "refuse_missing_structures",
    "validation_gate",
    "weighted_dice",
]


def weighted_dice(weights: list[float], per_case: list[float]) -> float:
    """Each held-out scan's mean Dice weighted by ``weights`` (:func:`archive_weights`); a scan
    whose Dice is undefined (no structure in label or prediction) is left out and the other
    weights rescaled (NaN when none is defined)."""
    values = np.asarray(per_case, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    defined = np.isfinite(values)
    if not defined.any():
        return float("nan")
    return float(np.dot(w[defined], values[defined]) / w[defined].sum())


def archive_weights(held_out: list[str], parts: ArchiveParts | None) -> list[float]:
    """Each held-out scan's weight in the held-out Dice: the share of the archive its part holds,
    split among the part's held-out scans, so that the gate estimates the Dice over the archive
    rather than over the held-out set (one scan of a part of 5 and one of a part of 25 weigh
    1 : 5). Without parts, or for a scan they do not know, the weights are equal."""
    if not held_out:
        return []
    if parts is None:
        return [1.0 / len(held_out)] * len(held_out)
    known = [parts.of_case.get(case) for case in held_out]
    in_part = {p: known.count(p) for p in set(known) if p is not None}
    average = float(np.mean(parts.sizes)) if parts.count else 1.0
    raw = [parts.sizes[p] / in_part[p] if p is not None else average for p in known]
    total = sum(raw)
    return [w / total for w in raw]


def change_by_part(
    held_out: list[str],
    new_dice: list[float],
    parent_dice: list[float],
    parts: ArchiveParts | None,
) -> list[dict[str, Any]]:
    """The held-out Dice of a new version and of its parent per part of the archive (the
    held-out scans of each part; a scan the parts do not know stands as a part of its own),
    largest part first."""
    groups: dict[str, dict[str, Any]] = {}
    for case, new, old in zip(held_out, new_dice, parent_dice, strict=True):
        part = parts.of_case.get(case) if parts is not None else None
        name = parts.name(part) if parts is not None and part is not None else f"scan {case}"
        group = groups.setdefault(
            name, {"part": part, "name": name, "cases": [], "new": [], "old": []}
        )
        group["cases"].append(case)
        group["new"].append(new)
        group["old"].append(old)
    rows = []
    for group in groups.values():
        new, old = float(np.nanmean(group.pop("new"))), float(np.nanmean(group.pop("old")))
        rows.append(
            {
                **group,
                "validation_dice": round(new, 6),
                "parent_validation_dice": round(old, 6),
                "change": round(new - old, 6),
            }
        )
    return sorted(rows, key=lambda r: (r["part"] is None, r["part"] or 0, r["name"]))


def validation_gate(
    new_dice: float | None, parent_dice: float | None, parent: str
) -> dict[str, Any]:
    """Promote only when the held-out Dice is not worse than the parent version's.

    Without held-out cases there is nothing to compare: the version is promoted, and the
    manifest says so.
    """
    if new_dice is None or parent_dice is None:
        return {
            "passed": True,
            "held_out": [],
            "reason": "no held-out cases: promoted without a validation gate",
        }
    if np.isnan(new_dice):
        return {
            "passed": False,
            "validation_dice": None,
            "parent_validation_dice": parent_dice,
            "reason": "held-out Dice could not be computed (no structure present)",
        }
    passed = bool(np.isnan(parent_dice) or new_dice >= parent_dice - 1e-9)
    return {
        "passed": passed,
        "validation_dice": new_dice,
        "parent_validation_dice": parent_dice,
        "reason": f"held-out Dice {new_dice:.4f} vs {parent_dice:.4f} of {parent}: "
        f"{'not worse' if passed else 'worse, not promoted'}",
    }


def refuse_missing_structures(gate: dict[str, Any], missing: dict[str, float], parent: str) -> None:
    """Keep a version from becoming current whose labels leave out structures ``parent`` finds
    in every labeled scan (``missing``: name -> the share of their voxels it gives them; see
    :func:`assft.training.partial_labels.missing_structures`); ``gate`` is changed in place."""
    found = ", ".join(f"{name} ({share:.1%} of their voxels)" for name, share in missing.items())
    gate["passed"] = False
    gate["missing_structures"] = list(missing)
    gate["reason"] = (
        f"not promoted: no label holds {found}, which {parent} finds in every labeled scan; "
        "fine-tuning on these labels teaches the model that they are nowhere. If clinicians "
        "label only some structures, record which (labeled_structures in assft.json, assft init "
        "--labeled-structures) and fine-tune again; if they are truly absent, make this version "
        f"current with assft rollback WS VERSION ({gate['reason']})"
    )
