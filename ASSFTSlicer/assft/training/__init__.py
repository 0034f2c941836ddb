"""Selective semi-supervised fine-tuning (SSFT) of a workspace's model."""

from __future__ import annotations

from assft.training.config import FinetuneConfig, FinetuneMode
from assft.training.losses import masked_dice_ce
from assft.training.reliability import select_reliable_cases

__all__ = ["FinetuneConfig", "FinetuneMode", "masked_dice_ce", "select_reliable_cases"]
