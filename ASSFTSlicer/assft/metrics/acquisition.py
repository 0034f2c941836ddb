"""What a scan's acquisition looks like to the model, and how far apart two acquisitions lie.

A scanner and its protocol show in how widely the network's *first* features spread (the
standard deviation of each channel over the scan: contrast, noise, resolution), as image style
does in style transfer (Huang and Belongie, "Arbitrary style transfer in real-time with
adaptive instance normalization", ICCV 2017), while the deep, pooled embedding z describes the
anatomy. Measured with the demo model on the two lab archives of the sample data (40 cases
each; BENCHMARKS.md, "Lab archives"): a case's nearest neighbour by this descriptor has its
acquisition for 40 of 40 (`hospital`) and 30 of 40 (`multicentre`) cases, by the deep
embedding for 34 and 23; the channel means add nothing, and standardising each channel over
the pool makes it worse (33 and 30), as it lifts channels that barely vary to full weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def acquisition_descriptor(
    batchnorm: Sequence[tuple[np.ndarray, np.ndarray]], embedding: np.ndarray
) -> np.ndarray:
    """The log standard deviation per channel of the first BatchNorm layer's input; a network
    without BatchNorm falls back to its ``embedding``."""
    if not batchnorm:
        return np.asarray(embedding, dtype=np.float64)
    _, variance = batchnorm[0]
    return 0.5 * np.log(np.asarray(variance, dtype=np.float64) + 1e-8)


def acquisition_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise distance (N, M) between the descriptors ``a`` (N, D) and ``b`` (M, D): the
    root mean square difference over the channels, so that it means the same for any number of
    channels (0.1: the first features spread about 10 % more or less, channel for channel)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None) / max(1, a.shape[1]))
