"""Labels that cover only some of the model's structures: the others come from the parent.

A lab that corrects only the liver of a many-structure model labels the liver (the workspace's
``labeled_structures``); what its label says about the other structures was never reviewed (it
may be the pre-filled prediction, or nothing). Trained on as it is, the model would learn every
other structure as background there and forget it.

So, before training, each labeled case's target is completed from the version the job starts
from (the parent): a voxel the label gives to a labeled structure keeps it; any other voxel takes
the parent's most likely class among the rest (background and the structures nobody labels).
Where the parent saw a labeled structure that the clinician did not draw, that is its second
guess, not background: the clinician said only "not this structure" there. The loss then covers
the labeled structures as the clinician drew them and holds the others where the parent put
them.

A workspace that says every structure is labeled while its labels hold only some is the failure
this module exists for, met by accident: :func:`missing_structures` finds the structures that no
label holds although the parent finds them in every labeled scan, and the gate keeps such a
version from becoming current.

The held-out Dice, which the gate and the best checkpoint read, scores the labeled structures
only; :func:`structure_agreement` measures how far the new version moved the others from the
parent (Dice of the two predictions, per structure).
"""

from __future__ import annotations

import numpy as np
import torch

from assft.metrics.overlap import dice_scores, mean_per_structure
from assft.models import LoadedModel
from assft.models.inference import sliding_window_probabilities
from assft.training.data import TrainingCase
from assft.training.losses import IGNORE

__all__ = [
    "MISSING_FRACTION",
    "complete_target",
    "labeled_channels",
    "missing_structures",
    "structure_agreement",
]


def labeled_channels(label_values: list[int], labeled_values: list[int]) -> list[int]:
    """The network channels of the labeled structures (channel c is ``label_values[c-1]``)."""
    return [c for c, value in enumerate(label_values, start=1) if value in labeled_values]


def _prediction(
    model: LoadedModel, image: torch.Tensor, excluded: list[int] | None = None
) -> torch.Tensor:
    """The model's class map on the model grid (one view), on the CPU; with ``excluded``, the
    most likely class among the others."""
    model.network.eval()
    with torch.no_grad():
        probabilities = sliding_window_probabilities(model, image)
        if excluded:
            probabilities[excluded] = -1.0
        return probabilities.argmax(0).cpu()


def complete_target(parent: LoadedModel, case: TrainingCase, channels: list[int]) -> TrainingCase:
    """The case with its target completed from ``parent`` outside the labeled ``channels``.

    Padding (``IGNORE``) stays ignored.
    """
    assert case.target is not None
    target = case.target
    rest = _prediction(parent, case.image, excluded=channels)
    drawn = torch.isin(target, torch.tensor(channels, dtype=target.dtype))
    completed = torch.where(drawn, target, rest)
    completed = torch.where(target == IGNORE, target, completed)
    return case.with_target(completed.contiguous())


def structure_agreement(
    model: LoadedModel, parent: LoadedModel, cases: list[TrainingCase], channels: list[int]
) -> dict[int, float]:
    """Dice between ``model``'s and ``parent``'s predictions per channel of ``channels``, the
    mean over ``cases`` (a structure neither predicts on a case does not count there)."""
    if not cases or not channels:
        return {}
    per_case = [
        dice_scores(_prediction(model, case.image), _prediction(parent, case.image), channels)
        for case in cases
    ]
    return mean_per_structure(per_case, channels)


MISSING_FRACTION = 0.001
"""A structure the parent finds in at least this share of a scan's voxels is there, for
:func:`missing_structures`."""


def missing_structures(
    parent: LoadedModel, cases: list[TrainingCase], channels: list[int]
) -> dict[int, float]:
    """The ``channels`` that no case's target holds although ``parent`` finds each of them in
    every case (at least :data:`MISSING_FRACTION` of its voxels): channel -> the mean share of
    the voxels the parent gives it. Labels that leave out what is plainly there were drawn for
    some structures only. Empty when every structure is in some label (no inference is run)."""
    targets = [case.target for case in cases if case.target is not None]
    absent = [c for c in channels if not any(bool(torch.any(t == c)) for t in targets)]
    if not absent or len(targets) != len(cases) or not cases:
        return {}
    shares: dict[int, list[float]] = {c: [] for c in absent}
    for case, target in zip(cases, targets, strict=True):
        predicted = _prediction(parent, case.image)
        valid = target != IGNORE
        total = max(int(valid.sum()), 1)
        for channel in absent:
            shares[channel].append(int(((predicted == channel) & valid).sum()) / total)
    return {c: float(np.mean(v)) for c, v in shares.items() if min(v) >= MISSING_FRACTION}
