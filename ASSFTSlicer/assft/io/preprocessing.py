"""From a scan to the model's grid and back.

Geometry (orientation, spacing) is handled with SimpleITK resampling in physical space, so any
result maps back onto the scan's exact grid; intensities are normalised with MONAI transforms.
Arrays on the model grid are in (x, y, z) order, as MONAI and nibabel use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles

from assft.errors import BadInputError

IntensityTransform = Callable[[NdarrayOrTensor], NdarrayOrTensor]

MAX_MODEL_GRID_VOXELS = 512**3
"""Most voxels a scan may have once resampled onto a model's grid (134 million: 512 MiB as
float32, before the network's activations and per-class probabilities). A scan beyond it is
refused before it is resampled (see also :data:`assft.io.imaging.MAX_EXTENT_MM`).
"""


@dataclass
class ModelGrid:
    """A scan resampled for the network.

    Attributes:
        reference: an image on the model grid (its geometry maps results back).
        tensor: normalised intensities, shape ``(1, X, Y, Z)``, float32.
    """

    reference: sitk.Image
    tensor: torch.Tensor


def intensity_transform(spec: dict[str, Any] | None) -> IntensityTransform:
    """The MONAI intensity transform a preset's ``preprocessing.intensity`` names.

    An optional ``standardize: {"mean", "std"}`` follows the mapping: the volume is z-scored,
    then scaled to that mean and standard deviation (as deepbet's own pipeline does).
    """
    if not spec:
        return lambda x: x
    mapping = _intensity_mapping(spec)
    target = spec.get("standardize")
    if not target:
        return mapping
    zscore = NormalizeIntensity()

    def mapped_then_standardised(x: NdarrayOrTensor) -> NdarrayOrTensor:
        return zscore(mapping(x)) * float(target["std"]) + float(target["mean"])

    return mapped_then_standardised


def _intensity_mapping(spec: dict[str, Any]) -> IntensityTransform:
    kind = spec.get("kind")
    if kind == "zscore":
        return NormalizeIntensity(nonzero=bool(spec.get("nonzero", False)))
    if kind == "range":
        return ScaleIntensityRange(
            a_min=spec["a_min"],
            a_max=spec["a_max"],
            b_min=spec.get("b_min", 0.0),
            b_max=spec.get("b_max", 1.0),
            clip=bool(spec.get("clip", True)),
        )
    if kind == "percentile":
        return ScaleIntensityRangePercentiles(
            lower=spec["lower"],
            upper=spec["upper"],
            b_min=spec.get("b_min", 0.0),
            b_max=spec.get("b_max", 1.0),
            clip=bool(spec.get("clip", True)),
        )
    if kind in (None, "none"):
        return lambda x: x
    raise BadInputError(f"unknown intensity normalisation {kind!r} (zscore, range, percentile)")


def resampled_size(image: sitk.Image, spacing: tuple[float, float, float]) -> tuple[int, ...]:
    """The size :func:`resample_to_spacing` gives ``image`` at ``spacing`` (same extent)."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing, dtype=float)
    if np.allclose(old_spacing, new_spacing):
        return tuple(int(s) for s in image.GetSize())
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / new_spacing))
    return tuple(int(s) for s in size)


def resample_to_spacing(
    image: sitk.Image, spacing: tuple[float, float, float], interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample onto a grid of the given spacing with the same origin, direction and extent."""
    if np.allclose(np.array(image.GetSpacing()), np.array(spacing, dtype=float)):
        return image
    return sitk.Resample(
        image,
        list(resampled_size(image, spacing)),
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        [float(s) for s in spacing],
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


def check_model_grid_size(
    image: sitk.Image,
    spacing: tuple[float, float, float] | None,
    source: str | Path | None = None,
) -> None:
    """Refuse a scan that would exceed :data:`MAX_MODEL_GRID_VOXELS` on the model's grid.

    Args:
        image: the scan.
        spacing: the model's spacing (None: the scan keeps its grid).
        source: the scan's file, named in the message.

    Raises:
        BadInputError: the resampled grid would be too large (e.g. a header's 400 mm voxels).
    """
    size = tuple(image.GetSize()) if spacing is None else resampled_size(image, spacing)
    voxels = math.prod(size)
    if voxels > MAX_MODEL_GRID_VOXELS:
        grid = (
            "on the model's grid"
            if spacing is None
            else f"once resampled to the model's {'x'.join(f'{s:g}' for s in spacing)} mm grid"
        )
        raise BadInputError(
            f"would be {'x'.join(str(n) for n in size)} = {voxels} voxels {grid}, more than the "
            f"{MAX_MODEL_GRID_VOXELS} allowed (MAX_MODEL_GRID_VOXELS): is the voxel spacing in "
            "its header right?",
            source,
        )


def to_model_grid(
    image: sitk.Image,
    *,
    spacing: tuple[float, float, float] | None,
    orientation: str | None,
    intensity: dict[str, Any] | None,
    source: str | Path | None = None,
) -> ModelGrid:
    """Reorient (DICOM-style code, e.g. ``RAS``), resample and normalise a scan.

    Args:
        image: the scan.
        spacing: the model's voxel spacing (None: keep the scan's).
        orientation: the model's orientation code (None: keep the scan's).
        intensity: the preset's intensity normalisation.
        source: the scan's file, named in an error message.

    Raises:
        BadInputError: the scan would exceed :data:`MAX_MODEL_GRID_VOXELS` on the model grid.
    """
    grid = sitk.DICOMOrient(image, orientation) if orientation else image
    check_model_grid_size(grid, spacing, source)
    if spacing is not None:
        grid = resample_to_spacing(grid, spacing)
    array = sitk.GetArrayViewFromImage(grid).transpose(2, 1, 0)
    tensor = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None]
    tensor = torch.as_tensor(intensity_transform(intensity)(tensor), dtype=torch.float32)
    reference = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(grid)
    return ModelGrid(reference=reference, tensor=tensor)


def to_image_grid(
    array: np.ndarray, grid: ModelGrid, image: sitk.Image, *, nearest: bool = False
) -> sitk.Image:
    """Map an (x, y, z) array on the model grid onto the scan's exact grid.

    Args:
        array: values on the model grid, (X, Y, Z).
        grid: the model grid the array lives on.
        image: the scan (the result copies its size, spacing, origin and direction).
        nearest: nearest-neighbour (labels) instead of linear interpolation (maps).
    """
    on_grid = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    on_grid.CopyInformation(grid.reference)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(on_grid, image, sitk.Transform(), interpolator, 0, on_grid.GetPixelID())
