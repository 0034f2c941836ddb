"""Selective semi-supervised fine-tuning (SSFT) of a workspace's model.

The configuration imports nothing heavy; the training parts load on first use.
"""

from __future__ import annotations

from typing import Any

from assft.training.config import FinetuneConfig, FinetuneMode

__all__ = ["FinetuneConfig", "FinetuneMode", "masked_dice_ce", "select_reliable_cases"]


def __getattr__(name: str) -> Any:
    if name == "masked_dice_ce":
        from assft.training.losses import masked_dice_ce

        return masked_dice_ce
    if name == "select_reliable_cases":
        from assft.training.reliability import select_reliable_cases

        return select_reliable_cases
    raise AttributeError(f"module 'assft.training' has no attribute {name!r}")
