"""Helpers for the Slicer-module tests: the module folder on ``sys.path``, tiny scans and labels.

The module's tests live in ``Testing/slicer_module/``, never in a folder named ``slicer/``:
``Testing/`` is on ``sys.path`` (pytest puts the root conftest's folder there), and the
``slicer`` package of slicer-core extends itself with every ``slicer/`` folder on ``sys.path``
and imports each module it finds there as ``slicer.<name>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ASSFTSlicer"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def require_slicer():
    """The ``slicer`` MRML package (the test is skipped where slicer-core is not installed)."""
    return pytest.importorskip(
        "slicer", reason="needs the slicer-core wheel (make setup installs it)"
    )


def rotation(angles: tuple[float, float, float]) -> np.ndarray:
    """A 3x3 rotation from three angles (radians) about x, y and z."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_scan(
    path: Path,
    shape=(9, 11, 13),
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    seed: int = 0,
) -> Path:
    """A random float scan (array shape (k, j, i)) with the given grid, as NIfTI."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(
        np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    )
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection((np.eye(3) if direction is None else direction).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def write_label_like(path: Path, scan: Path, array: np.ndarray) -> Path:
    """A uint16 label map on a scan's grid."""
    import SimpleITK as sitk

    reference = sitk.ReadImage(str(scan))
    label = sitk.GetImageFromArray(array.astype(np.uint16))
    label.CopyInformation(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(label, str(path))
    return path


def blob_labels(shape, seed: int = 0) -> np.ndarray:
    """A label map with two nested boxes (1 outside, 2 inside) and a random scatter of 1s."""
    rng = np.random.default_rng(seed)
    array = np.zeros(shape, np.uint16)
    k, j, i = shape
    array[1 : k - 1, 2 : j - 2, 2 : i - 3] = 1
    array[3 : k - 3, 4 : j - 4, 4 : i - 5] = 2
    array[rng.random(shape) < 0.05] = 1
    return array
