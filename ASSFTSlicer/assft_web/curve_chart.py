"""A fine-tuning job's learning curve as a small chart in the page's versions table: the training
loss (scaled to its own range) and the held-out Dice (on 0 to 1) along the job's steps, with the
step whose weights were kept marked. Slicer's panel shows the same curve in a plot view
(``ASSFTSlicerLib.worklist.updateLearningCurveChart``); the page draws it as SVG polylines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["HEIGHT", "WIDTH", "chart"]

WIDTH, HEIGHT, PAD = 72, 26, 2
"""The chart's size in pixels and the margin kept inside it."""


def _finite(points: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    return [
        (float(x), float(y))
        for x, y in points
        if math.isfinite(float(x)) and math.isfinite(float(y))
    ]


def chart(
    loss: Sequence[Sequence[float]], dice: Sequence[Sequence[float]], kept: float | None = None
) -> dict[str, Any] | None:
    """SVG geometry for the curve ``(step, value)`` points: ``loss`` and ``dice`` as polyline
    ``points`` strings, ``kept`` as the ``[x, y]`` of the kept step on the Dice line (None
    when that step was not evaluated). None when there is nothing to draw."""
    loss, dice = _finite(loss), _finite(dice)
    steps = [step for step, _ in loss + dice]
    if not steps:
        return None
    first, last = min(steps), max(steps)

    def x(step: float) -> float:
        return PAD + (step - first) / ((last - first) or 1.0) * (WIDTH - 2 * PAD)

    def y(fraction: float) -> float:  # 0 at the bottom, 1 at the top
        return HEIGHT - PAD - min(max(fraction, 0.0), 1.0) * (HEIGHT - 2 * PAD)

    low = min((value for _, value in loss), default=0.0)
    high = max((value for _, value in loss), default=1.0)

    def line(points: list[tuple[float, float]]) -> str:
        return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)

    kept_point = next(((x(s), y(d)) for s, d in dice if kept is not None and s == kept), None)
    return {
        "loss": line([(x(s), y((v - low) / ((high - low) or 1.0))) for s, v in loss]),
        "dice": line([(x(s), y(d)) for s, d in dice]),
        "kept": None if kept_point is None else [round(v, 1) for v in kept_point],
    }
