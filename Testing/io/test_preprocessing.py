"""Scans to the model grid and back, at the scan's exact geometry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from assft.errors import BadInputError
from assft.io.preprocessing import (
    MAX_MODEL_GRID_VOXELS,
    intensity_transform,
    to_image_grid,
    to_model_grid,
)


def _oblique_image() -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, (10, 12, 14)).astype(np.float32))
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((10.0, -5.0, 3.0))
    # A rotation about z by 30 degrees, with the first axis flipped (LPS-ish storage).
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    image.SetDirection((-c, -s, 0.0, s, -c, 0.0, 0.0, 0.0, 1.0))
    return image


def test_model_grid_round_trip_keeps_the_scans_geometry():
    image = _oblique_image()
    grid = to_model_grid(
        image, spacing=(1.5, 1.5, 1.5), orientation="RAS", intensity={"kind": "zscore"}
    )
    assert grid.tensor.shape[0] == 1
    assert grid.reference.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    # Normalised: mean 0, std 1.
    assert float(grid.tensor.mean()) == pytest.approx(0.0, abs=1e-4)
    back = to_image_grid(np.ones(grid.tensor.shape[1:], np.uint8), grid, image, nearest=True)
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()


def test_model_grid_array_order_is_xyz_in_the_preset_orientation():
    array = np.zeros((4, 5, 6), np.float32)  # SimpleITK order z, y, x
    array[0, 0, 5] = 1.0  # x = 5, y = 0, z = 0
    image = sitk.GetImageFromArray(array)  # identity direction: LPS
    grid = to_model_grid(image, spacing=None, orientation="RAS", intensity=None)
    assert tuple(grid.tensor.shape[1:]) == (6, 5, 4)
    # RAS flips x and y of LPS storage: the voxel moves to x = 0, y = 4.
    assert float(grid.tensor[0, 0, 4, 0]) == 1.0
    back = to_image_grid(grid.tensor[0].numpy(), grid, image, nearest=True)
    assert np.array_equal(sitk.GetArrayFromImage(back), array)


def test_intensity_kinds():
    x = torch.linspace(-2000, 2000, 101).reshape(1, 101, 1, 1)
    ranged = intensity_transform(
        {"kind": "range", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1, "clip": True}
    )(x)
    assert float(ranged.min()) == 0.0 and float(ranged.max()) == 1.0
    standardised = intensity_transform(
        {"kind": "percentile", "lower": 1, "upper": 99, "standardize": {"mean": 0.5, "std": 0.2}}
    )(x)
    assert float(standardised.mean()) == pytest.approx(0.5, abs=1e-4)
    assert float(standardised.std(unbiased=False)) == pytest.approx(0.2, abs=1e-3)
    with pytest.raises(BadInputError, match="unknown intensity"):
        intensity_transform({"kind": "magic"})


_RESAMPLE_IN_A_FRESH_PROCESS = """
import json
import numpy as np
import SimpleITK as sitk
from assft.errors import BadInputError
from assft.io.preprocessing import to_model_grid
from assft.runtime.portable import peak_memory_mb

image = sitk.GetImageFromArray(np.zeros((8, 8, 8), np.float32))
image.SetSpacing((300.0, 300.0, 300.0))  # 2.4 m along each axis: within MAX_EXTENT_MM
try:
    to_model_grid(image, spacing=(3.0, 3.0, 3.0), orientation="RAS", intensity=None,
                  source="scan.nrrd")
    message = None
except BadInputError as error:
    message = str(error)
print(json.dumps({"message": message, "peak_mb": peak_memory_mb()}))
"""


def test_a_scan_too_large_on_the_model_grid_is_refused_before_resampling():
    result = subprocess.run(
        [sys.executable, "-c", _RESAMPLE_IN_A_FRESH_PROCESS],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["message"] == (
        "scan.nrrd: would be 800x800x800 = 512000000 voxels once resampled to the model's 3x3x3 "
        f"mm grid, more than the {MAX_MODEL_GRID_VOXELS} allowed (MAX_MODEL_GRID_VOXELS): is the "
        "voxel spacing in its header right?"
    )
    # Resampling would allocate 2 GB and the tensor as much again (old peak: 4.7 GB); Python,
    # torch and MONAI alone take about 400 MB.
    assert document["peak_mb"] < 1000, document


def test_the_model_grid_limit_leaves_ordinary_scans_alone():
    image = _oblique_image()
    grid = to_model_grid(image, spacing=(1.0, 1.0, 1.0), orientation=None, intensity=None)
    assert tuple(grid.tensor.shape[1:]) == (11, 13, 25)
    assert math.prod(grid.tensor.shape) < MAX_MODEL_GRID_VOXELS
