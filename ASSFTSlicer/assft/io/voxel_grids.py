"""Voxel grids: described in plain lists (:func:`image_geometry`), compared between a label and
its image (:func:`geometry_mismatch`), and checked on reading to be placed alike by every
program (:func:`check_geometry`: no sheared axes, no NIfTI qform and sform that disagree)."""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.image_names import image_suffix

__all__ = ["VoxelGrid", "check_geometry", "geometry_mismatch", "image_geometry"]


def image_geometry(image: sitk.Image) -> dict[str, list[Any]]:
    """Describe an image's voxel grid in plain lists (JSON-ready).

    Args:
        image: Any SimpleITK image.

    Returns:
        ``{"size": [x, y, z], "spacing": [...], "origin": [...], "direction": [9 floats]}``.
    """
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
    }


def _format(values: Sequence[float]) -> str:
    """Format a vector compactly, e.g. ``(1.0, 1.0, 2.5)``."""
    return "(" + ", ".join(repr(round(float(v), 6)) for v in values) + ")"


class VoxelGrid(Protocol):
    """The geometry that :func:`geometry_mismatch` compares.

    A ``sitk.Image`` has it, and so has a ``sitk.ImageFileReader`` after
    ``ReadImageInformation()`` (the header alone).
    """

    def GetDimension(self) -> int: ...
    def GetSize(self) -> Sequence[int]: ...
    def GetSpacing(self) -> Sequence[float]: ...
    def GetOrigin(self) -> Sequence[float]: ...
    def GetDirection(self) -> Sequence[float]: ...


def geometry_mismatch(a: VoxelGrid, b: VoxelGrid, tolerance: float = 1e-4) -> str | None:
    """Compare the voxel grid of ``a`` (e.g. a label) with that of ``b`` (e.g. its image).

    Size must match exactly; spacing and origin within ``tolerance * max(1, |value|)``;
    direction cosines within ``tolerance``.

    Args:
        a: The image being checked.
        b: The reference image.
        tolerance: Relative tolerance (absolute for values below 1 and for directions).

    Returns:
        None when the grids match, else a short description of the first difference, e.g.
        ``"spacing (1.0, 1.0, 2.0) differs from the image's (1.0, 1.0, 1.0)"``.
    """
    if a.GetDimension() != b.GetDimension():
        return f"is {a.GetDimension()}D, the image is {b.GetDimension()}D"
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {tuple(a.GetSize())} differs from the image's {tuple(b.GetSize())}"
    for name, ours, theirs, relative in (
        ("spacing", a.GetSpacing(), b.GetSpacing(), True),
        ("origin", a.GetOrigin(), b.GetOrigin(), True),
        ("direction", a.GetDirection(), b.GetDirection(), False),
    ):
        for x, y in zip(ours, theirs, strict=True):
            limit = tolerance * max(1.0, abs(y)) if relative else tolerance
            if not abs(x - y) <= limit:
                return f"{name} {_format(ours)} differs from the image's {_format(theirs)}"
    return None


def check_geometry(image: sitk.Image, path: Path) -> None:
    """Refuse a voxel grid that no two programs would place alike: a spacing that is not a
    positive number, an origin or direction that is not finite, axes that are not perpendicular
    (a sheared grid), or, in a NIfTI file, a qform and an sform that disagree."""
    spacing = [float(v) for v in image.GetSpacing()]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise BadInputError(f"has the voxel spacing {_format(spacing)}; each must be above 0", path)
    origin = [float(v) for v in image.GetOrigin()]
    direction = [float(v) for v in image.GetDirection()]
    if not all(math.isfinite(v) for v in origin + direction):
        raise BadInputError(
            f"has a non-finite origin {_format(origin)} or direction {_format(direction)}", path
        )
    axes = np.array(direction).reshape(3, 3)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-3):
        raise BadInputError(
            f"has axes that are not perpendicular unit vectors (direction {_format(direction)}): "
            "a sheared grid, which the segmentation grid cannot hold; resample it first",
            path,
        )
    if image_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_transforms(path)


def _check_nifti_transforms(path: Path) -> None:
    """Refuse a NIfTI file whose qform and sform (both set) place the voxels differently.

    Programs differ in which one they believe (ITK, and so 3D Slicer and this engine, may take
    the qform where FSL and nibabel take the sform), so a label drawn in one could land
    elsewhere in another.
    """
    import nibabel as nib

    opener: Callable[..., Any] = gzip.open if image_suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:  # the header as written (nibabel's load mends it)
            start = stream.read(4)
            kind = (
                nib.Nifti2Header
                if struct.unpack("<i", start)[0] in (540, 469893120)
                else (nib.Nifti1Header)
            )
            stream.seek(0)
            header = kind.from_fileobj(stream, check=False)
        pixdim = [float(v) for v in header["pixdim"][1:4]]
        sform_code = int(header["sform_code"])
        qform_code = int(header["qform_code"])
        fields = ["quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"]
        used = {name: float(header[name]) for name in fields} if qform_code > 0 else {}
        for row in ("srow_x", "srow_y", "srow_z") if sform_code > 0 else ():
            used.update({f"{row}[{i}]": float(v) for i, v in enumerate(header[row])})
    except Exception:  # noqa: BLE001 - ITK read the file; nibabel's view is only a check
        return
    broken = [name for name, value in used.items() if not math.isfinite(value)]
    if broken:
        # ITK would quietly put such a scan somewhere (its origin or axes made up).
        raise BadInputError(
            f"has NaN or infinite values in the transform it uses ({', '.join(broken[:4])}): "
            "where its voxels lie is unknown; rewrite the header with the scan's real position",
            path,
        )
    codes = {"qform_code": qform_code, "sform_code": sform_code}
    unknown = [f"{name} {code}" for name, code in codes.items() if not 0 <= code <= 5]
    if unknown:
        # ITK uses such a transform; nibabel and FSL ignore it and place the voxels elsewhere.
        raise BadInputError(
            f"has {', '.join(unknown)}, which NIfTI does not define (0 to 5): programs differ "
            "in whether they use that transform; rewrite the header with a valid code",
            path,
        )
    if qform_code > 0:
        quaternion = sum(float(header[name]) ** 2 for name in fields[:3])
        if quaternion > 1.0 + 1e-5:
            # nibabel refuses it; ITK makes up a rotation from it.
            raise BadInputError(
                f"has a qform quaternion (quatern_b, c, d) of squared length {quaternion:.6g}, "
                "above 1: it is no rotation, and programs differ on where the voxels lie",
                path,
            )
    if sform_code > 0 and qform_code == 0 and all(math.isfinite(v) and v > 0 for v in pixdim):
        columns = np.linalg.norm(
            np.array(
                [[float(v) for v in header[row][:3]] for row in ("srow_x", "srow_y", "srow_z")]
            ),
            axis=0,
        )
        if not np.allclose(columns, pixdim, rtol=1e-3, atol=1e-6):
            # ITK takes the voxel size from pixdim, nibabel and FSL from the sform.
            raise BadInputError(
                f"has an sform whose voxel sizes {_format(columns.tolist())} disagree with its "
                f"pixdim {_format(pixdim)}: programs differ in which they use; rewrite the "
                "header so that both give the scan's real voxel size",
                path,
            )
    if sform_code == 0 and not all(math.isfinite(v) and v > 0 for v in pixdim):
        # ITK would read 1 mm (or the absolute value) where the header gives no voxel size.
        raise BadInputError(
            f"declares the voxel size {_format(pixdim)} (pixdim) and no sform; each must be "
            "above 0: write the scan's real voxel size into its header",
            path,
        )
    try:
        qform, _ = header.get_qform(coded=True)
        sform, _ = header.get_sform(coded=True)
    except Exception:  # noqa: BLE001 - as above
        return
    if qform is None or sform is None or np.allclose(qform, sform, rtol=1e-4, atol=1e-3):
        return
    zooms = [np.linalg.norm(m[:3, :3], axis=0) for m in (qform, sform)]
    raise BadInputError(
        "has a qform and an sform that disagree (voxel (0, 0, 0) at "
        f"{_format(qform[:3, 3].tolist())} mm by the qform, {_format(sform[:3, 3].tolist())} by "
        f"the sform; voxel sizes {_format(zooms[0].tolist())} and {_format(zooms[1].tolist())}): "
        "programs differ in which one they use, so a label could land elsewhere; rewrite it "
        "with one transform (set qform_code or sform_code to 0)",
        path,
    )
