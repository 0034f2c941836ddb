"""Dice + cross-entropy with ignored voxels (padding, unreliable pseudo-label voxels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -1


def masked_dice_ce(
    logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft Dice + cross-entropy over the voxels whose target is not ``IGNORE``.

    Args:
        logits: ``(B, C, X, Y, Z)``.
        target: ``(B, X, Y, Z)`` class indices, ``IGNORE`` (-1) where the loss must not look.

    Returns:
        The scalar loss (0 when every voxel is ignored, with a gradient path kept).
    """
    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), target.clamp_min(0), reduction="none")
    ce = (ce * valid).sum() / valid.sum()
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.clamp_min(0), logits.shape[1]).movedim(-1, 1).float()
    mask = valid[:, None].float()
    dims = (0, 2, 3, 4)
    intersection = (probs * one_hot * mask).sum(dims)
    denominator = (probs * mask).sum(dims) + (one_hot * mask).sum(dims)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return ce + dice.mean()


def distillation(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): the KL divergence of the student's softened
    class distribution from the teacher's, per voxel, times ``temperature**2`` (so that its
    gradient keeps the scale of a cross-entropy), averaged over the voxels.

    Args:
        logits: the student's ``(B, C, X, Y, Z)``.
        teacher_logits: the teacher's, same shape (no gradient flows into them).
        mask: ``(B, X, Y, Z)``, True where the teacher teaches (default: everywhere); 0 with a
            gradient path when it is empty.
    """
    student = F.log_softmax(logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = (teacher.exp() * (teacher - student)).sum(1)
    if mask is None:
        return kl.mean() * temperature**2
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return (kl * mask).sum() / mask.sum() * temperature**2
