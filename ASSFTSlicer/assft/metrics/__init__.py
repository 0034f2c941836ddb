"""Query metrics of ASSFT as pure functions: arrays in, scores out.

They know nothing of models, files or Slicer (method.md gives the definitions).

The numpy-only modules (knowledge gap, selection) load eagerly; the torch-based ones (overlap,
uncertainty) load on first use, so that the query strategies, and the Slicer module that lists
them, import without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from assft.metrics.acquisition import (
    acquisition_descriptor,
    acquisition_distance,
)
from assft.metrics.knowledge_gap import (
    batchnorm_knowledge_gap,
    gaussian_symmetric_kl,
    pool_mean_gap,
    prototype_count,
    prototype_knowledge_gap,
    representation_drift,
)
from assft.metrics.selection import (
    GreedySelection,
    cosine_distance,
    greedy_diverse_selection,
    k_center_greedy,
    pool_spread,
    power_sampling_order,
    rank_normalise,
)

if TYPE_CHECKING:
    from assft.metrics.overlap import dice_scores, mean_dice
    from assft.metrics.uncertainty import (
        SegmentationDifficulty,
        foreground_roi,
        segmentation_difficulty,
        voxel_entropy,
    )

_LAZY = {
    "dice_scores": "overlap",
    "mean_dice": "overlap",
    "SegmentationDifficulty": "uncertainty",
    "foreground_roi": "uncertainty",
    "segmentation_difficulty": "uncertainty",
    "voxel_entropy": "uncertainty",
}
"""Names of the torch-based modules, imported on first access (PEP 562)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"assft.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'assft.metrics' has no attribute {name!r}")


__all__ = [
    "SegmentationDifficulty",
    "acquisition_descriptor",
    "acquisition_distance",
    "batchnorm_knowledge_gap",
    "cosine_distance",
    "dice_scores",
    "foreground_roi",
    "gaussian_symmetric_kl",
    "greedy_diverse_selection",
    "k_center_greedy",
    "mean_dice",
    "pool_mean_gap",
    "power_sampling_order",
    "prototype_count",
    "prototype_knowledge_gap",
    "GreedySelection",
    "rank_normalise",
    "representation_drift",
    "segmentation_difficulty",
    "pool_spread",
    "voxel_entropy",
]
