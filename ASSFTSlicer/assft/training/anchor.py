"""What the labeled and held-out scans say of the parent version, for SSFT's anchor
(``FinetuneConfig.anchor``): where it is right, so that fine-tuning holds it there."""

from __future__ import annotations

import math
from typing import Any

import torch

from assft.metrics import acquisition_descriptor, dice_scores, mean_dice
from assft.models import LoadedModel
from assft.models.inference import infer_case
from assft.training.config import FinetuneConfig
from assft.training.data import TrainingCase
from assft.training.losses import IGNORE

__all__ = ["borne_out", "parent_evidence"]


def borne_out(dices: list[float], training: list[bool], *, margin: float) -> list[bool]:
    """Which scans bore the parent out: a Dice at least ``margin`` above the worst Dice on the
    ``training`` scans (those show where the parent fails)."""
    worst = min(
        (d for d, t in zip(dices, training, strict=True) if t and math.isfinite(d)),
        default=math.nan,
    )
    return [bool(d >= worst + margin) for d in dices]


def parent_evidence(
    model: LoadedModel,
    labeled: list[TrainingCase],
    held_out: list[TrainingCase],
    channels: list[int],
    config: FinetuneConfig,
) -> list[dict[str, Any]]:
    """Per labeled and held-out scan: its acquisition descriptor, the parent's confidence and
    Dice there, whether it is a training scan, and whether it bore the parent out: a Dice at
    least ``anchor_margin`` above the parent's worst Dice on the scans labeled for training
    (those show where it fails). The Dice covers the network ``channels`` the labels are
    trusted for (every structure, or the labeled ones)."""
    model.network.eval()
    evidence: list[dict[str, Any]] = []
    dices: list[float] = []
    training = {case.case_id for case in labeled}
    for case in labeled + held_out:
        result = infer_case(
            model,
            case.image,
            views=config.views,
            tau=config.roi_tau,
            radius=config.roi_radius,
            batchnorm=True,
            keep_probabilities=True,
        )
        assert result.probabilities is not None and case.target is not None
        prediction = result.probabilities.argmax(0).cpu()
        valid = case.target != IGNORE
        dice = mean_dice(
            dice_scores(
                torch.where(valid, prediction, 0), torch.where(valid, case.target, 0), channels
            )
        )
        evidence.append(
            {
                "case": case.case_id,
                "training": case.case_id in training,
                "descriptor": acquisition_descriptor(result.batchnorm, result.embedding),
                "confidence": round(float(result.difficulty.confidence), 6),
                "dice": round(float(dice), 6),
            }
        )
        dices.append(float(dice))
    flags = borne_out(
        dices,
        [bool(e["training"]) for e in evidence],
        margin=config.anchor_margin,
    )
    for flag, e in zip(flags, evidence, strict=True):
        e["borne_out"] = flag
    return evidence
