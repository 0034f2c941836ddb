"""Tiny synthetic scans with ground truth, for tests and the engine's quick demo.

Two nested ellipsoidal "structures" (label 1 a shell, label 2 the core) in a noisy
background, with per-case shape, contrast, bias-field and noise variation, so that cases differ
in difficulty and in how far they lie from one another. Deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.io.imaging import write_image_atomic

# The model preset that goes with these scans (two structures, 3 mm, 16^3 patches).
TINY_PRESET: dict[str, Any] = {
    "name": "tiny-unet",
    "description": (
        "A 3-level MONAI UNet with BatchNorm, small enough for tests and self-tests on a CPU."
    ),
    "architecture": "monai.UNet",
    "arguments": {
        "spatial_dims": 3,
        "in_channels": 1,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "checkpoint": None,
    "preprocessing": {
        "spacing": [3.0, 3.0, 3.0],
        "orientation": "RAS",
        "intensity": {"kind": "zscore", "nonzero": False},
    },
    "patch_size": [16, 16, 16],
    "sw_batch_size": 2,
    "overlap": 0.25,
    "label_names": {"1": "shell", "2": "core"},
    "embedding_layer": "model.1.submodule.1.submodule",
    "encoder_prefixes": ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule"],
    "head_layer": "model.2",
    "has_head": True,
    "output_activation": "softmax",
}


def write_tiny_preset(path: Path) -> Path:
    """Write :data:`TINY_PRESET` as a preset file (``assft init --model PATH``)."""
    path.write_text(json.dumps(TINY_PRESET), encoding="utf-8")
    return path


@dataclass
class SyntheticCase:
    """Paths of one synthetic case."""

    case_id: str
    image: Path
    label: Path


def synthetic_volume(
    size: int | tuple[int, int, int], rng: np.random.Generator, *, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """One (z, y, x) image and its label; ``shift`` in [0, 1] grades the acquisition shift."""
    shape = (size, size, size) if isinstance(size, int) else tuple(size)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    centre = rng.uniform(-0.15, 0.15, size=3).reshape(3, 1, 1, 1)
    radii = rng.uniform(0.45, 0.75, size=3).reshape(3, 1, 1, 1)
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(0))
    core_ratio = rng.uniform(0.45, 0.65)
    label = np.zeros(shape, dtype=np.uint8)
    label[r < 1.0] = 1
    label[r < core_ratio] = 2
    contrast = np.array([0.0, 1.0, 2.0]) * (1.0 - 0.6 * shift) + rng.normal(0, 0.05, 3)
    image = contrast[label]
    bias = 1.0 + shift * 0.5 * (grid[0] * rng.uniform(-1, 1) + grid[1] * rng.uniform(-1, 1))
    image = image * bias + rng.normal(0, 0.1 + 0.4 * shift, shape)
    return image.astype(np.float32), label


def write_synthetic_pool(
    out: Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 24,
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
) -> list[SyntheticCase]:
    """Write ``n`` cases as ``images/case_XXX.nii.gz`` and ``truth/case_XXX.nii.gz``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        shift = float(i % 4) / 3.0
        image, label = synthetic_volume(size, rng, shift=shift)
        case_id = f"case_{i:03d}"
        files = []
        for array, folder in ((image, "images"), (label, "truth")):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing(spacing)
            item.SetOrigin((-size * spacing[0] / 2, -size * spacing[1] / 2, 0.0))
            files.append(write_image_atomic(item, out / folder / f"{case_id}.nii.gz"))
        cases.append(SyntheticCase(case_id, files[0], files[1]))
    return cases
