"""Voxel uncertainty and Anatomical Segmentation Difficulty (ASD).

ASD measures predictive uncertainty only inside an adaptive foreground region of interest, so
that a case is ranked by how hard its anatomy is rather than by background noise (Yang et al.,
"Adapting Medical Vision Foundation Models for Volumetric Medical Image Segmentation via Active
Learning and Selective Semi-supervised Fine-tuning", arXiv 2509.10784).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

_EPS = 1e-12


def voxel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each voxel's class distribution, normalised to [0, 1].

    Args:
        probs: class probabilities, shape ``(C, *spatial)`` with ``C >= 2``, summing to 1 over C.

    Returns:
        ``H(v) = -sum_c p_c(v) log p_c(v) / log C``, shape ``spatial``.
    """
    n_classes = probs.shape[0]
    if n_classes < 2:
        raise ValueError(f"voxel_entropy needs at least 2 classes, got {n_classes}")
    p = probs.float().clamp_min(_EPS)
    return -(probs.float() * p.log()).sum(0) / math.log(n_classes)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a 3D mask by a cube of half-width ``radius`` voxels."""
    if radius <= 0:
        return mask.bool()
    size = 2 * radius + 1
    grown = F.max_pool3d(mask.float()[None, None], kernel_size=size, stride=1, padding=radius)
    return grown[0, 0] > 0


def foreground_roi(
    probs: torch.Tensor,
    view_argmax: torch.Tensor | None = None,
    *,
    tau: float = 0.5,
    radius: int = 2,
) -> torch.Tensor:
    """Adaptive foreground region of interest Omega of one case.

    Args:
        probs: view-averaged probabilities ``(C, X, Y, Z)``; channel 0 is background.
        view_argmax: optional per-view argmax labels ``(V, X, Y, Z)``; every view's foreground
            joins the region, so a structure seen in one view only is not lost.
        tau: threshold on the foreground probability ``1 - p_background``.
        radius: dilation radius in voxels (the boundary is where the uncertainty lives).

    Returns:
        Boolean mask ``(X, Y, Z)``.
    """
    core = (1.0 - probs[0].float()) >= tau
    if view_argmax is not None:
        core = core | (view_argmax > 0).any(0)
    return dilate(core, radius)


@dataclass
class SegmentationDifficulty:
    """What one case's probabilities say about its difficulty.

    Attributes:
        asd: mean entropy over the foreground ROI (whole volume when the ROI is empty).
        per_class: label channel -> mean entropy over the dilated region predicted as that class
            (classes predicted nowhere are absent).
        empty_roi: True when no foreground was predicted at all.
        mean_entropy: mean entropy of the whole volume (the `entropy` baseline).
        class_entropy: label channel -> mean entropy over the voxels predicted as that class,
            not dilated (the class-stratified score of `clasp`).
        confidence: mean max-probability over the ROI (SSFT's reliability).
        roi_fraction: fraction of the volume inside the ROI.
    """

    asd: float
    per_class: dict[int, float] = field(default_factory=dict)
    empty_roi: bool = False
    mean_entropy: float = 0.0
    class_entropy: dict[int, float] = field(default_factory=dict)
    confidence: float = 0.0
    roi_fraction: float = 0.0


def segmentation_difficulty(
    probs: torch.Tensor,
    view_argmax: torch.Tensor | None = None,
    *,
    tau: float = 0.5,
    radius: int = 2,
    entropy: torch.Tensor | None = None,
) -> SegmentationDifficulty:
    """ASD and the per-structure difficulties of one case.

    Args:
        probs: view-averaged probabilities ``(C, X, Y, Z)``; channel 0 is background.
        view_argmax: optional per-view argmax ``(V, X, Y, Z)`` (see :func:`foreground_roi`).
        tau: ROI threshold on the foreground probability.
        radius: ROI dilation radius in voxels.
        entropy: the precomputed :func:`voxel_entropy` map, if the caller has it.

    Returns:
        A :class:`SegmentationDifficulty`.
    """
    if entropy is None:
        entropy = voxel_entropy(probs)
    roi = foreground_roi(probs, view_argmax, tau=tau, radius=radius)
    n_roi = int(roi.sum())
    mean_entropy = float(entropy.mean())
    argmax = probs.argmax(0)
    max_prob = probs.max(0).values.float()
    per_class: dict[int, float] = {}
    class_entropy: dict[int, float] = {}
    for c in range(1, probs.shape[0]):
        predicted = argmax == c
        if not bool(predicted.any()):
            continue
        class_entropy[c] = float(entropy[predicted].mean())
        per_class[c] = float(entropy[dilate(predicted, radius)].mean())
    if n_roi == 0:
        return SegmentationDifficulty(
            asd=mean_entropy,
            per_class=per_class,
            empty_roi=True,
            mean_entropy=mean_entropy,
            class_entropy=class_entropy,
            confidence=float(max_prob.mean()),
            roi_fraction=0.0,
        )
    return SegmentationDifficulty(
        asd=float(entropy[roi].mean()),
        per_class=per_class,
        empty_roi=False,
        mean_entropy=mean_entropy,
        class_entropy=class_entropy,
        confidence=float(max_prob[roi].mean()),
        roi_fraction=n_roi / roi.numel(),
    )
