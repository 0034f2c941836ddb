"""Reading, checking and writing 3D images and label maps (SimpleITK).

Every reader returns a 3D scalar image or raises :class:`~assft.errors.BadInputError` with a
one-line message that names the file and says what is wrong with it, so that a bad scan in a
pool of hundreds is reported as such and not as a stack trace from deep inside ITK.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from assft.errors import BadInputError
from assft.io.atomic import atomic_path

__all__ = [
    "IMAGE_SUFFIXES",
    "VoxelGrid",
    "case_id_from_path",
    "geometry_mismatch",
    "image_geometry",
    "image_suffix",
    "is_dicom_series",
    "read_image",
    "read_label",
    "write_image_atomic",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File name endings recognised as images (matched case-insensitively)."""

_SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_MAX_LABEL_VALUE = int(np.iinfo(np.uint16).max)
_CASE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def image_suffix(path: str | Path) -> str:
    """Return the image suffix of a file name (``".nii.gz"`` counts as one), or ``""``.

    Args:
        path: A file path or name.

    Returns:
        The matching entry of :data:`IMAGE_SUFFIXES` in lower case, or ``""`` if none matches.
    """
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def case_id_from_path(path: str | Path) -> str:
    """Derive a case id from an image file name or a DICOM series folder name.

    The image suffix is dropped, characters outside ``[A-Za-z0-9._-]`` become ``_`` and
    leading ``.``, ``_`` and ``-`` are removed, so the id is safe as a file name and starts
    with a letter or a digit (``"case"`` when nothing is left).

    Args:
        path: Image file or DICOM folder.

    Returns:
        The case id, e.g. ``"sub-01_T1w"`` for ``/data/sub-01 T1w.nii.gz``.
    """
    name = Path(path).name
    suffix = image_suffix(name)
    if suffix:
        name = name[: -len(suffix)]
    case_id = _CASE_ID_UNSAFE.sub("_", name).lstrip("._-")
    return case_id or "case"


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Silence ITK warnings printed to stderr (e.g. "No Series were found") for a moment."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _itk_reason(error: RuntimeError, path: Path) -> str:
    """Turn SimpleITK's multi-line exception text into a short reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons: list[str] = []
    for line in lines:
        if line.startswith("Exception thrown in SimpleITK"):
            continue
        line = re.sub(r"^.*?ERROR:\s*", "", line)
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        line = re.sub(r"^\[\w+\]\s*\w+:\s*", "", line)
        line = line.replace(f'"{path}"', "the file").replace(str(path), "the file")
        if line.startswith("Reason: No such file"):
            continue  # the file exists: ITK says this about files it cannot parse
        if line and line not in reasons and not line.lower().startswith("trouble"):
            reasons.append(line)
    reason = "; ".join(reasons[:1] + reasons[-1:] if len(reasons) > 1 else reasons)
    reason = " ".join(reason.split())
    return reason[:200] if reason else "unknown SimpleITK error"


def is_dicom_series(folder: str | Path) -> bool:
    """Tell whether a folder directly holds at least one DICOM series.

    Args:
        folder: A directory.

    Returns:
        True if GDCM finds a series in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    with _quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of real floating point


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """Locate the voxels of a single-file NIfTI from its header.

    Returns:
        ``(data offset, data bytes, float dtype or None for other voxel types)``, or None when
        the header is not a recognisable single-file NIfTI-1 or NIfTI-2 header.
    """
    for endian in "<>":
        if len(header) >= 348 and struct.unpack_from(endian + "i", header, 0)[0] == 348:
            if header[344:348] != b"n+1\x00":
                return None
            (datatype, bitpix) = struct.unpack_from(endian + "2h", header, 70)
            ndim, *dims = struct.unpack_from(endian + "8h", header, 40)
            offset = int(struct.unpack_from(endian + "f", header, 108)[0])
            break
        if len(header) >= 540 and struct.unpack_from(endian + "i", header, 0)[0] == 540:
            if header[4:8] != b"n+2\x00":
                return None
            (datatype, bitpix) = struct.unpack_from(endian + "2h", header, 12)
            ndim, *dims = struct.unpack_from(endian + "8q", header, 16)
            offset = int(struct.unpack_from(endian + "q", header, 168)[0])
            break
    else:
        return None
    if not 1 <= ndim <= 7 or bitpix <= 0 or offset < 348:
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[:ndim])
    kind = _NIFTI_FLOAT_TYPES.get(int(datatype))
    dtype = None if kind is None else np.dtype(endian + kind)
    return offset, voxels * int(bitpix) // 8, dtype


def _scan_nifti(path: Path) -> None:
    """Refuse a truncated NIfTI file or one with NaN/infinite voxels.

    ITK fills a truncated NIfTI with zeros and reads NaN voxels as 0 without a word, so the
    file is checked here (streamed: one more pass over the data).
    """
    with open(path, "rb") as stream:
        compressed = stream.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    nan = infinite = 0
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a plain single-file NIfTI: let ITK judge it
            offset, size, dtype = layout
            if not compressed and dtype is None:
                available = max(path.stat().st_size - offset, 0)
            else:
                stream.seek(offset)
                available = 0
                chunk_bytes = 1 << 22
                while available < size and (
                    chunk := stream.read(min(chunk_bytes, size - available))
                ):
                    available += len(chunk)
                    if dtype is not None and len(chunk) % dtype.itemsize == 0:
                        values = np.frombuffer(chunk, dtype)
                        finite = np.isfinite(values)
                        if not finite.all():
                            nan_here = int(np.isnan(values).sum())
                            nan += nan_here
                            infinite += int(values.size - finite.sum()) - nan_here
    except (OSError, EOFError, zlib.error) as error:
        raise BadInputError(f"is corrupted or truncated ({error})", path) from None
    if available < size:
        raise BadInputError(
            f"is truncated: its header announces {size} bytes of voxels, the file holds "
            f"{available}",
            path,
        )
    _raise_non_finite(nan, infinite, path)


def _read_any(path: str | Path) -> tuple[sitk.Image, Path]:
    """Read an image file or the first DICOM series of a folder, checked to be 3D scalar."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BadInputError("does not exist", path)
    try:
        if path.is_dir():
            with _quiet_itk():
                series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
                if not series:
                    raise BadInputError("is a folder without a DICOM series", path)
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames(
                    sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
                )
                image = reader.Execute()
        else:
            if image_suffix(path) in (".nii", ".nii.gz"):
                _scan_nifti(path)
            with _quiet_itk():
                image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise BadInputError(
            f"is corrupted, truncated or not an image (SimpleITK: {_itk_reason(error, path)})",
            path,
        ) from None
    except OSError as error:
        raise BadInputError(f"cannot be read ({error.strerror or error})", path) from None

    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        dimension, size = 3, image.GetSize()
    if dimension == 2 or (dimension == 3 and size[2] == 1):
        raise BadInputError(f"is 2D (size {tuple(size)}); a 3D volume is needed", path)
    if dimension != 3:
        raise BadInputError(f"is {dimension}D (size {tuple(size)}); a 3D volume is needed", path)
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1 or "complex" in image.GetPixelIDTypeAsString():
        raise BadInputError(
            f"has {image.GetPixelIDTypeAsString()} pixels ({components} components); "
            "a scalar image is needed",
            path,
        )
    return image, path


def _raise_non_finite(nan: int, infinite: int, path: Path) -> None:
    """Refuse an image with NaN or infinite voxels, counting them in the message."""
    if nan or infinite:
        parts = [f"{nan} NaN voxels"] if nan else []
        parts += [f"{infinite} infinite voxels"] if infinite else []
        raise BadInputError(f"contains {' and '.join(parts)}", path)


def _check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN and infinite voxels in an array read from ``path``."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        _raise_non_finite(nan, int(array.size - finite.sum()) - nan, path)


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D scalar image as float32.

    Args:
        path: A NIfTI, NRRD or MetaImage file, or a folder holding a DICOM series (the first
            series GDCM finds is read).

    Returns:
        The image, cast to ``sitkFloat32``, with its geometry unchanged.

    Raises:
        BadInputError: the path is missing, unreadable, corrupted or truncated, not 3D
            (a size-1 third axis counts as 2D), has vector or complex pixels, or holds NaN or
            infinite voxels.
    """
    image, path = _read_any(path)
    _check_finite(sitk.GetArrayViewFromImage(image), path)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def read_label(path: str | Path) -> sitk.Image:
    """Read a 3D label map as uint16.

    Args:
        path: Label file (or DICOM series folder), in any format :func:`read_image` reads.

    Returns:
        The label map, cast to ``sitkUInt16`` after checking that every voxel is a whole
        number between 0 and 65535.

    Raises:
        BadInputError: as :func:`read_image`, or the values are not integers, are negative or
            too large.
    """
    image, path = _read_any(path)
    array = sitk.GetArrayViewFromImage(image)
    _check_finite(array, path)
    if array.size and np.issubdtype(array.dtype, np.floating):
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise BadInputError(
                f"holds {fractional.size} non-integer values (e.g. {float(fractional[0]):g}); "
                "a label map holds whole numbers",
                path,
            )
    if array.size:
        low, high = array.min(), array.max()
        if low < 0:
            raise BadInputError(f"holds negative label values (minimum {low:g})", path)
        if high > _MAX_LABEL_VALUE:
            raise BadInputError(
                f"holds label values above {_MAX_LABEL_VALUE} (maximum {high:g})", path
            )
    if image.GetPixelID() != sitk.sitkUInt16:
        image = sitk.Cast(image, sitk.sitkUInt16)
    return image


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


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write an image so that ``path`` is either the old file or the complete new one.

    The image goes to a hidden temporary file in the same folder (same suffix, so SimpleITK
    picks the format), is flushed to disk, then renamed over ``path``. On any failure the
    temporary file is removed and the error re-raised.

    Args:
        image: The image to write (compressed where the format allows).
        path: Destination; one of the single-file formats ``.nii.gz``, ``.nii``, ``.nrrd``,
            ``.mha`` (a detached header would point at the temporary data file).

    Returns:
        The destination path.

    Raises:
        BadInputError: the suffix is not a single-file image format.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in _SINGLE_FILE_SUFFIXES:
        raise BadInputError(
            f"cannot be written atomically: use one of {', '.join(_SINGLE_FILE_SUFFIXES)}", path
        )
    with atomic_path(path, suffix=suffix) as temporary, _quiet_itk():
        sitk.WriteImage(image, str(temporary), True)
    return path
