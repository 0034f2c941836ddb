"""Query metrics of ASSFT as pure functions: arrays in, scores out.

They know nothing of models, files or Slicer (method.md gives the definitions).
"""

from __future__ import annotations

from assft.metrics.knowledge_gap import (
    batchnorm_knowledge_gap,
    gaussian_symmetric_kl,
    pool_mean_gap,
    prototype_count,
    prototype_knowledge_gap,
    representation_drift,
)
from assft.metrics.overlap import dice_scores, mean_dice
from assft.metrics.selection import (
    cosine_distance,
    greedy_diverse_selection,
    k_center_greedy,
    power_sampling_order,
    rank_normalise,
)
from assft.metrics.uncertainty import (
    SegmentationDifficulty,
    foreground_roi,
    segmentation_difficulty,
    voxel_entropy,
)

__all__ = [
    "SegmentationDifficulty",
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
    "rank_normalise",
    "representation_drift",
    "segmentation_difficulty",
    "voxel_entropy",
]
