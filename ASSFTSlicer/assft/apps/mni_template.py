"""The MNI ICBM152 2009a template the sample data is built from, found and prepared.

The T1-weighted template and its grey/white-matter probability maps ship inside nilearn's wheel
(``pip install "assft[demo]"`` installs it; ``pip install --no-deps nilearn`` is enough: only its
data files are read, nilearn is never imported), or sit in the folder ``$ASSFT_MNI152_DIR`` names.
:func:`template_at` crops them to the brain and anti-aliases them for one output spacing, once
per spacing; :mod:`assft.apps.sampledata` deforms and re-acquires them into labelled cases.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from assft.errors import BadInputError

NILEARN_VERSION = "0.14.1"
"""The nilearn release of the ``demo`` extra and the Makefile (any release with the files works)."""

TEMPLATE_DIR_ENV = "ASSFT_MNI152_DIR"
"""A folder holding the three template files, used instead of nilearn's wheel when set."""

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_WHEEL_FOLDER = "nilearn/datasets/data"

_VENTRICLE_DEPTH_MM = 20.0  # CSF this deep inside the brain: ventricles and deep cisterns


# The template ------------------------------------------------------------------------------


def locate_template() -> dict[str, Path]:
    """The three MNI152 2009a files (T1, GM, WM) from ``$ASSFT_MNI152_DIR`` or nilearn's wheel.

    Raises:
        BadInputError: nilearn is not installed or lacks a file; says how to install it.
    """
    override = os.environ.get(TEMPLATE_DIR_ENV)
    if override:
        files = {key: Path(override) / name for key, name in TEMPLATE_FILES.items()}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise BadInputError(
                f"${TEMPLATE_DIR_ENV} is set but lacks the MNI152 template file(s) "
                f"{', '.join(Path(m).name for m in missing)}",
                override,
            )
        return files
    how = (
        f'pip install "assft[demo]" (or pip install --no-deps nilearn=={NILEARN_VERSION}: only its '
        f"data files are read; or set ${TEMPLATE_DIR_ENV} to a folder holding "
        f"{', '.join(TEMPLATE_FILES.values())})"
    )
    try:
        distribution = importlib.metadata.distribution("nilearn")
    except importlib.metadata.PackageNotFoundError:
        raise BadInputError(
            "the sample data is built from the MNI152 template that ships in nilearn's wheel, "
            f"which is not installed: {how}"
        ) from None
    files = {}
    for key, name in TEMPLATE_FILES.items():
        path = Path(str(distribution.locate_file(f"{_WHEEL_FOLDER}/{name}")))
        if not path.is_file():
            raise BadInputError(
                f"nilearn {distribution.version} has no {_WHEEL_FOLDER}/{name}: reinstall it, {how}"
            )
        files[key] = path
    return files


def template_source() -> dict[str, Any]:
    """Where the template comes from (for manifests)."""
    files = locate_template()
    try:
        version = importlib.metadata.version("nilearn")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "name": "MNI ICBM152 2009a nonlinear symmetric (T1, GM and WM probability maps)",
        "package": None if os.environ.get(TEMPLATE_DIR_ENV) else f"nilearn {version}",
        "files": sorted(p.name for p in files.values()),
        "licence": "see assft/resources/SampleData.md",
    }


@dataclass
class Template:
    """The template cropped to its brain, anti-aliased for one output spacing.

    ``channels`` is (1, 6, Z, Y, X): T1, GM, WM, CSF (0..1, blurred), the depth into tissue
    from the nearest CSF or background (mm) and the distance to the ventricles (mm).
    """

    channels: torch.Tensor
    crop_start: np.ndarray  # (x, y, z) full-template index of the first channel voxel's centre
    step: float  # full-template voxels per channel voxel
    centre: np.ndarray  # (x, y, z) full-template index of the brain's bounding-box centre
    reference: sitk.Image
    levels: dict[str, float]  # median T1 of CSF, GM, WM (0..1)


def _distance_inside(mask: np.ndarray, voxel_mm: float = 1.0) -> np.ndarray:
    """Distance (mm) from each voxel outside ``mask`` to the mask; 0 inside."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((float(voxel_mm),) * 3)
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.clip(sitk.GetArrayFromImage(distance), 0.0, None).astype(np.float32)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian_blur(volume: torch.Tensor, sigma: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of (C, Z, Y, X) with ``sigma`` in voxels per (z, y, x) axis."""
    out = volume[None]
    channels = volume.shape[0]
    for axis, s in enumerate(sigma):
        if s <= 0.05:
            continue
        kernel = _gaussian_kernel(s)
        shape = [1, 1, 1]
        shape[axis] = kernel.numel()
        weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
        padding = [0, 0, 0]
        padding[axis] = kernel.numel() // 2
        pad = []
        for p in reversed(padding):
            pad += [p, p]
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out[0]


def _pool(volume: np.ndarray, k: int) -> np.ndarray:
    """Average blocks of k^3 voxels of a (Z, Y, X) volume (the end padded by replication)."""
    if k == 1:
        return volume.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    pad: list[int] = []
    for size in reversed(volume.shape):
        pad += [0, (-size) % k]
    return F.avg_pool3d(F.pad(tensor, pad, mode="replicate"), k)[0, 0].numpy()


@lru_cache(maxsize=4)
def _load_template(spacing: float, t1_path: str, gm_path: str, wm_path: str) -> Template:
    reference = sitk.ReadImage(t1_path)
    t1_full = sitk.GetArrayViewFromImage(reference)
    zyx = np.argwhere(t1_full > 0)
    low, high = zyx.min(0), zyx.max(0)
    centre_zyx = (low + high) / 2.0
    margin = 12
    start = np.maximum(low - margin, 0)
    stop = np.minimum(high + margin + 1, t1_full.shape)
    crop = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    arrays = {}
    for key, path in (("t1", t1_path), ("gm", gm_path), ("wm", wm_path)):
        image = reference if key == "t1" else sitk.ReadImage(path)
        if image.GetSize() != reference.GetSize():
            raise BadInputError("the MNI152 template files do not share one grid", path)
        arrays[key] = sitk.GetArrayViewFromImage(image)[crop].astype(np.float32) / 255.0
    brain = arrays["t1"] > 0
    gm = arrays["gm"] * brain
    wm = arrays["wm"] * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    # Labels at 1 mm: background outside the brain, else the most probable tissue.
    label = np.where(gm >= wm, 1, 2).astype(np.uint8)
    label[csf > np.maximum(gm, wm)] = 3
    label[~brain] = 0
    levels = {
        name: float(np.median(arrays["t1"][label == value]))
        for name, value in (("csf", 3), ("gm", 1), ("wm", 2))
    }
    # Coarse grids: average blocks of k^3 voxels first (cheaper blur and distances).
    k = max(1, int(spacing // 2))
    non_tissue = _pool((label == 0) | (label == 3), k) > 0.5
    outside = _pool(~brain, k) > 0.5
    ventricles = (_pool(label == 3, k) > 0.5) & (_distance_inside(outside, k) > _VENTRICLE_DEPTH_MM)
    depth = _distance_inside(non_tissue, k)  # 0 on CSF and background, else the distance to them
    stack = [_pool(v, k) for v in (arrays["t1"] * brain, gm, wm, csf)]
    stack += [depth, _distance_inside(ventricles, k)]
    channels = torch.from_numpy(np.ascontiguousarray(np.stack(stack)))
    sigma = math.sqrt(max(spacing**2 - k**2, 0.0)) / 2.355 / k  # anti-aliasing, in voxels
    if sigma > 0:
        channels[:4] = gaussian_blur(channels[:4], (sigma, sigma, sigma))
    return Template(
        channels=channels[None].contiguous(),
        crop_start=start[::-1].astype(np.float64) + (k - 1) / 2.0,
        step=float(k),
        centre=centre_zyx[::-1].astype(np.float64),
        reference=reference,
        levels=levels,
    )


def template_at(spacing: float) -> Template:
    files = locate_template()
    return _load_template(float(spacing), str(files["t1"]), str(files["gm"]), str(files["wm"]))
