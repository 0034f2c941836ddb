"""Overlap between a predicted and a reference label map (Dice), as pure functions."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["dice_scores", "mean_dice", "mean_per_structure"]


def _as_array(labels: Any) -> np.ndarray | torch.Tensor:
    if isinstance(labels, torch.Tensor):
        return labels.detach()
    return np.asarray(labels)


def dice_scores(prediction: Any, truth: Any, label_values: Iterable[int]) -> dict[int, float]:
    """Dice coefficient of each label value.

    ``Dice(v) = 2 |P_v ∩ T_v| / (|P_v| + |T_v|)`` where ``P_v`` and ``T_v`` are the voxels
    holding value ``v`` in the prediction and in the truth. A value absent from both is NaN
    (nothing to score; :func:`mean_dice` skips it); a value present in only one of them is 0.

    Args:
        prediction: integer label map, a numpy array or a torch tensor.
        truth: integer label map of the same shape (numpy or torch; mixing them is allowed).
        label_values: the (non-zero) label values to score.

    Returns:
        ``{value: dice}`` in the order of ``label_values``.

    Raises:
        ValueError: the shapes differ.
    """
    pred = _as_array(prediction)
    ref = _as_array(truth)
    if tuple(pred.shape) != tuple(ref.shape):
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from truth shape {tuple(ref.shape)}"
        )
    if isinstance(pred, torch.Tensor) != isinstance(ref, torch.Tensor):
        if isinstance(pred, torch.Tensor):
            ref = torch.as_tensor(np.ascontiguousarray(ref), device=pred.device)
        else:
            pred = torch.as_tensor(np.ascontiguousarray(pred), device=ref.device)
    elif (
        isinstance(pred, torch.Tensor)
        and isinstance(ref, torch.Tensor)
        and pred.device != ref.device
    ):
        ref = ref.to(pred.device)
    scores: dict[int, float] = {}
    for value in label_values:
        value = int(value)
        in_pred = pred == value
        in_ref = ref == value
        size_pred = int(in_pred.sum())
        size_ref = int(in_ref.sum())
        total = size_pred + size_ref
        if total == 0:
            scores[value] = math.nan
            continue
        overlap = int((in_pred & in_ref).sum())
        scores[value] = 2.0 * overlap / total
    return scores


def mean_dice(scores: Mapping[Any, float | None]) -> float:
    """Mean of the Dice scores that are defined (NaN and None are skipped).

    Args:
        scores: e.g. the result of :func:`dice_scores`.

    Returns:
        The mean, or NaN when no score is defined.
    """
    values = [float(v) for v in scores.values() if v is not None and not math.isnan(float(v))]
    return float(np.mean(values)) if values else math.nan


def mean_per_structure(
    per_case: Sequence[Mapping[int, float]], values: Iterable[int]
) -> dict[int, float]:
    """Each structure's mean Dice over the cases where it is defined (NaN where it never is).

    Args:
        per_case: :func:`dice_scores` of each case.
        values: the label values (or channels) to average.
    """
    out: dict[int, float] = {}
    for value in values:
        defined = [s[value] for s in per_case if not math.isnan(s[value])]
        out[value] = float(np.mean(defined)) if defined else math.nan
    return out
